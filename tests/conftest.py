"""Test setup: 8 simulated CPU devices, so sharded code runs as it would on a mesh."""

import os

# Must happen before JAX is imported anywhere.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pathlib

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
