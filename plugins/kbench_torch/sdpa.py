"""SDPA backends for attention."""


def register_all(register):
    pass
