"""Shared test setup.

timm pulls a torchvision wheel built for CUDA torch; next to the CPU torch it fails at import with
`operator torchvision::nms does not exist`. Defining the two op schemas first lets it import (we never
call them).
"""
import os
import subprocess
import sys

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")

try:
    import torch

    for name in ("torchvision::nms", "torchvision::qnms"):
        try:
            torch.library.define(name, "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        except Exception:  # already defined (real torchvision ops present)
            pass
except ImportError:  # torch is an optional extra
    pass


def pytest_collection_modifyitems(config, items):
    """Skip `gpu`-marked tests unless JAX's default backend is a GPU (say why, never pass silently)."""
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    import jax

    backend = jax.default_backend()
    if backend == "gpu":
        return
    reason = (f"needs a GPU: JAX default backend is {backend!r} "
              f"(JAX_PLATFORMS={os.environ.get('JAX_PLATFORMS')!r}); on a GPU machine run "
              "JAX_PLATFORMS=cuda,cpu python -m pytest -m gpu")
    for item in gpu_items:
        item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory):
    """The README's quickstart command (`configs/quickstart.py`, nothing overridden), run once per session for the
    heavy tests that read its outputs (losses, k-NN, the teacher exported at iterations 149 and 299).
    -> the run's output directory (pathlib.Path)."""
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
    out = tmp_path_factory.mktemp("quickstart") / "run"
    r = subprocess.run([sys.executable, "-m", "dinov2_jax.train", "--config", "configs/quickstart.py",
                        f"--config.train.output_dir={out}"], cwd=root, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                       capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0, r.stderr[-3000:]
    return out
