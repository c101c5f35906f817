"""Hub linear depthers `dinov2_vit{s,b,l,g}14_ld` (official `dinov2/hub/depthers.py`).

  dep = load_depther("dinov2_vits14_ld", weights="dinov2_vits14_pretrain.pth",
                     head="dinov2_vits14_nyu_linear4_head.pth")
  depth = dep(images)  # images [B, H, W, 3] ImageNet-normalised, any H, W -> metres [B, H, W]

The head reads the official blocks (`official_out_index`; layers read from the checkpoint's input width)
and uses the hub's bins (0.001..80 m, as the official builder, whatever the dataset). Head file URL pattern:
https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_nyu_linear4_head.pth (download yourself).
"""
from __future__ import annotations

import logging
import os

from flax import nnx

from dinov2_jax import hub
from dinov2_jax.models.heads.depth import LinearDepthHead, head_from_state_dict, official_out_index, predict_depth

logger = logging.getLogger("dinov2_jax.hub_depthers")

DEPTHER_NAMES = tuple(f"dinov2_vit{s}14_ld" for s in "sblg")
DATASETS = ("nyu", "kitti")


def head_file_name(name: str, dataset: str = "nyu", layers: int = 4) -> str:
    """e.g. ("dinov2_vitl14_ld", "kitti", 1) -> "dinov2_vitl14_kitti_linear_head.pth"."""
    if name not in DEPTHER_NAMES:
        raise ValueError(f"unknown depther {name!r}; valid names: {', '.join(DEPTHER_NAMES)}")
    if dataset not in DATASETS or layers not in (1, 4):
        raise ValueError(f"dataset must be one of {DATASETS} and layers 1 or 4 (got {dataset!r}, {layers})")
    return f"{name[:-len('_ld')]}_{dataset}_linear{'4' if layers == 4 else ''}_head.pth"


class LinearDepther(nnx.Module):
    """Backbone + linear depth head: images [B, H, W, 3] -> depth [B, H, W] (hub whole-image inference)."""

    def __init__(self, backbone, head: LinearDepthHead, out_index):
        if head.in_channels != 2 * backbone.embed_dim * len(out_index):
            raise ValueError(f"head has {head.in_channels} input channels; {len(out_index)} blocks of a "
                             f"{backbone.embed_dim}-dim backbone give {2 * backbone.embed_dim * len(out_index)}")
        self.backbone, self.head, self.out_index = backbone, head, tuple(out_index)

    def __call__(self, images):
        return predict_depth(self.backbone, self.head, images, self.out_index)


def load_depth_checkpoint(path: str) -> dict:
    """Official depther checkpoint (.pth, mmcv layout) -> state dict (numpy; read without torch)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"depth head {path!r} not found (official files: {head_file_name(DEPTHER_NAMES[0])}...)")
    from dinov2_jax.weights.pth import read_pth  # torch-free, as torch.load(weights_only=True)

    obj = read_pth(path)
    return obj.get("state_dict", obj)


def load_depther(name: str, weights: str | None = None, head: str | None = None, *, layers: int = 4,
                 dtype="float32") -> LinearDepther:
    """Backbone `name[:-3]` (see hub.load) + official linear depth head file (None: random head, logged)."""
    if name not in DEPTHER_NAMES:
        raise ValueError(f"unknown depther {name!r}; valid names: {', '.join(DEPTHER_NAMES)}")
    backbone = hub.load(name[:-len("_ld")], weights, dtype=dtype, attn_impl=hub.default_attn_impl(dtype))
    if head is None:
        logger.warning("load_depther(%r): no head given -> RANDOM depth head (depths are meaningless)", name)
        out_index = official_out_index(backbone.n_blocks, layers)
        return LinearDepther(backbone, LinearDepthHead(2 * backbone.embed_dim * len(out_index), rngs=nnx.Rngs(0)),
                             out_index)
    h = head_from_state_dict(load_depth_checkpoint(head))
    n = h.in_channels // (2 * backbone.embed_dim)
    return LinearDepther(backbone, h, official_out_index(backbone.n_blocks, n))
