"""Fixture loading for the models tests (golden outputs of the official DINOv2 code, see fixtures/README)."""
import json
import os

import numpy as np
import pytest

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
IMAGE_SCALE = 8.0  # images stored as int8 k, value k / 8 (see make_backbone_fixtures.py)


def load_case(name: str) -> dict:
    """-> {"sd": {key: float32}, "kw": arch kwargs, "block_chunks": int, "inputs": {prefix: {...}}, "gil": {...}}"""
    d = np.load(os.path.join(FIXTURES, f"backbone_{name}.npz"))
    case = {"sd": {}, "gil": {}, "inputs": {}, "kw": json.loads(str(d["arch_json"])),
            "block_chunks": int(d["block_chunks"])}
    for k in d.files:
        if k.startswith("sd/"):
            case["sd"][k[3:]] = d[k].astype(np.float32)
        elif k.startswith("gil/"):
            case["gil"][k[4:]] = d[k]
        elif k.endswith("x") and "out/" not in k:
            prefix = k[:-1]
            inp = case["inputs"].setdefault(prefix, {})
            inp["x"] = d[k].astype(np.float32) / IMAGE_SCALE
            inp["masks"] = d[prefix + "masks"] if prefix + "masks" in d.files else None
            inp["out"] = {o[len(prefix) + 4:]: d[o] for o in d.files if o.startswith(prefix + "out/")}
    return case


@pytest.fixture
def official_case():
    return load_case
