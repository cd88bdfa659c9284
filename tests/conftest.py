"""Shared fixtures: a fresh cache directory, and a Cache on it closed at teardown."""
import pytest

import lmdbcache


@pytest.fixture
def cache_dir(tmp_path):
    """Path (str) of a cache directory that does not exist yet."""
    return str(tmp_path / "cache")


@pytest.fixture
def cache(cache_dir):
    c = lmdbcache.Cache(cache_dir)
    try:
        yield c
    finally:
        c.close()
