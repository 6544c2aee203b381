"""A training config from a JSON file: how pod-slice runs of a scaling sweep read the
run_config.json the sweep wrote for them.

    python -m polar_jax train --config configs/scaling/from_json.py:DIR/runs/NAME/run_config.json --workdir DIR/runs/NAME
"""

import json
import pathlib

import ml_collections


def get_config(path: str = ""):
    """The ConfigDict stored in `path` (a run_config.json or a trainer's config.json)."""
    if not path:
        raise ValueError("from_json.py needs the JSON file: --config configs/scaling/from_json.py:PATH")
    return ml_collections.ConfigDict(json.loads(pathlib.Path(path).read_text()))
