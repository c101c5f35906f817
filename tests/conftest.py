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
