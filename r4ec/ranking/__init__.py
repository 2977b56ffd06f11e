"""CTR backbones, knowledge connectors, training from Feast training sets, and the Table 2 report."""

# the backbones by name (r4ec.ranking.train.BACKBONES maps them to their classes): here, so that the command line
# can offer them without importing torch
BACKBONE_NAMES = ("lr", "din", "dien", "gru4rec", "autoint", "fignn", "dcn", "deepfm")


class RankingError(Exception):
    """A training or report request that cannot be served, in one line."""
