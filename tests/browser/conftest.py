import pytest

from tests.browsers import chromium


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched
