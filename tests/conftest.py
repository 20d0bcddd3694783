import pytest


@pytest.fixture(autouse=True)
def _scheduler_db(settings):
    """Every test runs with the documented SCHEDULER defaults plus the test job module."""
    yield
