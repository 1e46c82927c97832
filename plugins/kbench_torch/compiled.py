"""``compile`` backend: torch.compile of the references."""


def register_all(register):
    pass
