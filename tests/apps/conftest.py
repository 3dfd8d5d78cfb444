import pytest

from tests.apps.serve import helpers


@pytest.fixture(scope="session")
def random_pipe():
    return helpers.random_pipeline()


@pytest.fixture
def one_torch_thread():
    yield from helpers.one_torch_thread()
