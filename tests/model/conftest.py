import pytest
from tiny_models import write_spec


@pytest.fixture
def tiny_spec(tmp_path):
    return write_spec(tmp_path)
