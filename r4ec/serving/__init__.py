"""The ranking service: a user and candidate items in, the items ordered by the published run's scores out, with
every feature read from the Feast online store (DESIGN §6)."""


class ServingError(Exception):
    """The service cannot start or answer (nothing published, a run that cannot serve), in one line."""
