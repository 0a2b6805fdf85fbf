import pytest

from helpers import SingleGaussian


@pytest.fixture
def gaussian():
    return SingleGaussian()
