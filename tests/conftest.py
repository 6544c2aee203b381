"""Test setup: 8 simulated CPU devices, so sharded code runs as it would on a mesh."""

import os

# Must happen before JAX is imported anywhere.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import gc
import pathlib
import shutil
import sys
import tempfile

import numpy as np
import pytest

# One JAX persistent compilation cache for the whole run, set here in the process that starts pytest:
# its xdist workers and every subprocess a test starts (servers, multi-process runs, commands) inherit
# it, and load what an earlier one compiled instead of compiling it again: the same executables, so
# the same results; only the suite's time changes (a server's warm-up 21 s -> 8 s). Removed at the end.
_JAX_CACHE = pathlib.Path(tempfile.gettempdir()) / f"polar_jax_tests_jax_cache_{os.getpid()}"
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(_JAX_CACHE)
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"


def pytest_collection_modifyitems(items):
    """Files with a `slow` test first, each file's tests in their order (a stable sort): with `-n auto
    --dist loadfile` the long files start early instead of one running alone at the end of the run."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)


def pytest_sessionfinish(session):
    """The process that made the compilation cache removes it."""
    if os.environ["JAX_COMPILATION_CACHE_DIR"] == str(_JAX_CACHE):
        shutil.rmtree(_JAX_CACHE, ignore_errors=True)


FIXTURES = pathlib.Path(__file__).parent / "fixtures"


@pytest.fixture
def hf_fixture():
    """Path and reference arrays of a golden HF fixture: `hf_fixture("llama_untied")`."""

    def get(name: str):
        path = FIXTURES / "hf" / name
        return path, dict(np.load(path / "reference.npz"))

    return get


@pytest.fixture(autouse=True, scope="module")
def release_compiled_programs():
    """After each test module, drop JAX's compiled programs. Each XLA:CPU executable holds a few
    memory mappings of JIT code until its cache entry goes, and the whole suite compiles enough
    programs to pass Linux's vm.max_map_count (65530): XLA then crashed inside a compile (SIGSEGV /
    SIGABRT in `backend_compile_and_load`) near the end of a full run, never in a file run alone."""
    yield
    if "jax" in sys.modules:
        sys.modules["jax"].clear_caches()
        gc.collect()
