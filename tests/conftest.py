"""Test setup: 8 simulated CPU devices, so sharded code runs as it would on a mesh."""

import os

# Must happen before JAX is imported anywhere.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import gc
import pathlib
import sys

import numpy as np
import pytest

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
