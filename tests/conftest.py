"""Shared test setup.

timm pulls a torchvision wheel built for CUDA torch; next to the CPU torch it fails at import with
`operator torchvision::nms does not exist`. Defining the two op schemas first lets it import (we never
call them).
"""
import os

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
    import pytest

    backend = jax.default_backend()
    if backend == "gpu":
        return
    reason = (f"needs a GPU: JAX default backend is {backend!r} "
              f"(JAX_PLATFORMS={os.environ.get('JAX_PLATFORMS')!r}); on a GPU machine run "
              "JAX_PLATFORMS=cuda,cpu python -m pytest -m gpu")
    for item in gpu_items:
        item.add_marker(pytest.mark.skip(reason=reason))
