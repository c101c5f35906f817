"""Import torchvision (the official recipe's ops) next to CPU torch, or skip the test.

The torchvision wheel timm pulls is built for CUDA torch and fails at import with
`operator torchvision::nms does not exist`; defining the two op schemas first lets it import
(tests/conftest.py does the same; repeated here so these tests do not depend on its state).
"""
import pytest


def import_torchvision():
    torch = pytest.importorskip("torch")
    for name in ("nms", "qnms"):
        try:
            torch.library.define(f"torchvision::{name}",
                                 "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        except Exception:  # already defined (by conftest or a real torchvision build)
            pass
    tv = pytest.importorskip("torchvision")
    import torchvision.transforms as T
    import torchvision.transforms.functional as F
    return torch, tv, T, F
