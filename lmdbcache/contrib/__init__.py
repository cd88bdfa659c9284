"""Integrations with other frameworks.  Each module imports its framework
only when it is imported itself: lmdbcache needs none of them.

- :mod:`lmdbcache.contrib.django`: a Django cache backend.
- :mod:`lmdbcache.contrib.dogpile`: a dogpile.cache backend (entry point ``lmdbcache``).
- :mod:`lmdbcache.contrib.joblib`: :class:`~lmdbcache.Memory`, joblib.Memory's
  ``cache()`` interface (scikit-learn's ``Pipeline(memory=...)``).
"""
