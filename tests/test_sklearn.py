"""lmdbcache.Memory: joblib.Memory's cache() interface, checked with a real
scikit-learn Pipeline that counts how often its transformers are fitted."""
import pickle
import subprocess
import sys
import textwrap

import pytest

import lmdbcache

np = pytest.importorskip("numpy")
sklearn = pytest.importorskip("sklearn")

from sklearn.base import BaseEstimator, TransformerMixin, clone  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.utils.validation import check_memory  # noqa: E402

# Python 3.10 has no -P; its test run starts in tests/, where no source package can shadow.
SAFE_PATH = ["-P"] if sys.version_info >= (3, 11) else []

FITS = []  # one entry per real fit, in this process


class CountingScaler(TransformerMixin, BaseEstimator):
    """Standardises columns; records every fit."""

    def __init__(self, with_mean=True):
        self.with_mean = with_mean

    def fit(self, X, y=None):
        FITS.append(self.with_mean)
        self.mean_ = X.mean(axis=0) if self.with_mean else np.zeros(X.shape[1])
        self.scale_ = X.std(axis=0) + 1e-12
        return self

    def transform(self, X):
        return (X - self.mean_) / self.scale_


def data(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(200, 6)) * [1, 10, 100, 1, 1, 1]
    y = (X[:, 0] + X[:, 1] / 10 > 0).astype(int)
    return X, y


@pytest.fixture(autouse=True)
def reset_fits():
    FITS.clear()


def make_pipeline(memory, C=1.0, with_mean=True):
    return Pipeline([("scale", CountingScaler(with_mean=with_mean)), ("pca", PCA(3)),
                     ("clf", LogisticRegression(C=C))], memory=memory)


def test_check_memory_accepts_it(tmp_path):
    memory = lmdbcache.Memory(str(tmp_path / "m"))
    assert check_memory(memory) is memory


def test_pipeline_refit_reuses_fitted_transformers(tmp_path):
    X, y = data()
    memory = lmdbcache.Memory(str(tmp_path / "m"))
    pipe = make_pipeline(memory).fit(X, y)
    assert FITS == [True]
    first = pipe.predict_proba(X)

    pipe.fit(X, y)                       # the same refit: no transformer fitted again
    assert FITS == [True]
    np.testing.assert_allclose(pipe.predict_proba(X), first)
    assert hasattr(pipe.named_steps["scale"], "mean_")  # a fitted transformer came back

    pipe.set_params(clf__C=0.1).fit(X, y)  # only the final step changed
    assert FITS == [True]

    pipe.set_params(scale__with_mean=False).fit(X, y)  # a transformer's parameter changed
    assert FITS == [True, False]

    make_pipeline(memory).fit(X + 1, y)  # other data
    assert FITS == [True, False, True]


def test_matches_an_uncached_pipeline(tmp_path):
    X, y = data(1)
    cached = make_pipeline(lmdbcache.Memory(str(tmp_path / "m"))).fit(X, y)
    cached = make_pipeline(lmdbcache.Memory(str(tmp_path / "m"))).fit(X, y)  # from the cache
    plain = make_pipeline(None).fit(X, y)
    np.testing.assert_allclose(cached.predict_proba(X), plain.predict_proba(X))


def test_another_process_reuses_the_fits(tmp_path):
    X, y = data()
    path = str(tmp_path / "m")
    make_pipeline(lmdbcache.Memory(path)).fit(X, y)
    assert FITS == [True]
    # the estimator's class must have the same module name in both processes
    package, _, _ = __name__.rpartition(".")
    script = textwrap.dedent(f"""
        import importlib, os, sys, types
        import lmdbcache
        sys.path.insert(0, os.path.dirname({__file__!r}))
        if {package!r}:
            pkg = sys.modules[{package!r}] = types.ModuleType({package!r})
            pkg.__path__ = [os.path.dirname({__file__!r})]
        t = importlib.import_module({__name__!r})
        X, y = t.data()
        t.make_pipeline(lmdbcache.Memory({path!r})).fit(X, y)
        print(len(t.FITS))
    """)
    out = subprocess.run([sys.executable, *SAFE_PATH, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0"


def test_clone_and_pickle_keep_the_location(tmp_path):
    memory = lmdbcache.Memory(str(tmp_path / "m"), ttl=60)
    pipe = make_pipeline(memory)
    copy = clone(pipe)
    assert copy.memory.location == memory.location and copy.memory.ttl == 60
    again = pickle.loads(pickle.dumps(memory))
    assert again.location == memory.location


CALLS = []


def square(x, verbose=False):
    CALLS.append(x)
    return x * x


def test_joblib_interface(tmp_path):
    memory = lmdbcache.Memory(str(tmp_path / "m"))
    calls = CALLS
    calls.clear()
    cached = memory.cache(square, ignore=["verbose"])
    assert cached(4) == 16 and cached(4, verbose=True) == 16
    assert calls == [4]
    assert cached.check_call_in_cache(4) and not cached.check_call_in_cache(5)
    assert cached.func is square
    cached.clear()
    assert not cached.check_call_in_cache(4)
    decorated = memory.cache(ignore=["verbose"])(square)
    assert decorated(3) == 9 and memory.eval(square, 3) == 9
    memory.clear()
    assert not decorated.check_call_in_cache(3)
    memory.reduce_size()
    assert repr(memory) == f"Memory(location={memory.location!r})"
    with pytest.raises(NotImplementedError):
        memory.cache(square, cache_validation_callback=lambda meta: True)
