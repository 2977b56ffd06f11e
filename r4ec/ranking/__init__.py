"""CTR backbones, knowledge connectors, training from Feast training sets, and the Table 2 report."""


class RankingError(Exception):
    """A training or report request that cannot be served, in one line."""
