"""Shared test setup.

timm pulls a torchvision wheel built for CUDA torch; next to the CPU torch it fails at import with
`operator torchvision::nms does not exist`. Defining the two op schemas first lets it import (we never
call them).
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

try:
    import torch

    for schema in (
        "torchvision::nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
        "torchvision::qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    ):
        try:
            torch.library.define(schema)
        except RuntimeError:
            pass  # already defined (real torchvision ops present)
except ImportError:  # torch is an optional extra
    pass
