"""Hub depthers: linear `dinov2_vit{s,b,l,g}14_ld` and DPT `dinov2_vit{s,b,l,g}14_dd` (official `dinov2/hub/depthers.py`).

  dep = load_depther("dinov2_vits14_ld", weights="dinov2_vits14_pretrain.pth",
                     head="dinov2_vits14_nyu_linear4_head.pth")
  dep = load_depther("dinov2_vitl14_dd", weights="dinov2_vitl14_pretrain.pth", head="dinov2_vitl14_kitti_dpt_head.pth")
  depth = dep(images)  # images [B, H, W, 3] ImageNet-normalised, any H, W -> metres [B, H, W]

Both read the official blocks (`official_out_index`). The linear head's layers come from the checkpoint's
input width and it uses the hub's bins (0.001..80 m, as the official builder, whatever the dataset); the DPT
head's range is the dataset's (NYU 10 m, KITTI 80 m), as the official builder sets it. Head file URL pattern:
https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_nyu_linear4_head.pth (download yourself).
"""
from __future__ import annotations

import logging
import os

from flax import nnx

from dinov2_jax import hub
from dinov2_jax.models.heads import dpt
from dinov2_jax.models.heads.depth import LinearDepthHead, head_from_state_dict, official_out_index, predict_depth

logger = logging.getLogger("dinov2_jax.hub_depthers")

DEPTHER_NAMES = tuple(f"dinov2_vit{s}14_{kind}" for kind in ("ld", "dd") for s in "sblg")
DATASETS = ("nyu", "kitti")


def head_file_name(name: str, dataset: str = "nyu", layers: int = 4) -> str:
    """e.g. ("dinov2_vitl14_ld", "kitti", 1) -> "dinov2_vitl14_kitti_linear_head.pth";
    ("dinov2_vitg14_dd", "nyu") -> "dinov2_vitg14_nyu_dpt_head.pth"."""
    if name not in DEPTHER_NAMES:
        raise ValueError(f"unknown depther {name!r}; valid names: {', '.join(DEPTHER_NAMES)}")
    if dataset not in DATASETS or layers not in (1, 4):
        raise ValueError(f"dataset must be one of {DATASETS} and layers 1 or 4 (got {dataset!r}, {layers})")
    if name.endswith("_dd"):
        return f"{name[:-3]}_{dataset}_dpt_head.pth"
    return f"{name[:-3]}_{dataset}_linear{'4' if layers == 4 else ''}_head.pth"


class LinearDepther(nnx.Module):
    """Backbone + linear depth head: images [B, H, W, 3] -> depth [B, H, W] (hub whole-image inference)."""

    def __init__(self, backbone, head: LinearDepthHead, out_index):
        if head.in_channels != 2 * backbone.embed_dim * len(out_index):
            raise ValueError(f"head has {head.in_channels} input channels; {len(out_index)} blocks of a "
                             f"{backbone.embed_dim}-dim backbone give {2 * backbone.embed_dim * len(out_index)}")
        self.backbone, self.head, self.out_index = backbone, head, tuple(out_index)

    def __call__(self, images):
        return predict_depth(self.backbone, self.head, images, self.out_index)


class DPTDepther(nnx.Module):
    """Backbone + DPT depth head: images [B, H, W, 3] -> depth [B, H, W] (hub whole-image inference)."""

    def __init__(self, backbone, head: dpt.DPTDepthHead):
        if head.embed_dim != backbone.embed_dim:
            raise ValueError(f"DPT head is for a {head.embed_dim}-dim backbone; this one is {backbone.embed_dim}-dim")
        self.backbone, self.head = backbone, head
        self.out_index = official_out_index(backbone.n_blocks, 4)

    def __call__(self, images):
        return dpt.predict_depth_dpt(self.backbone, self.head, images, self.out_index)


def load_depth_checkpoint(path: str) -> dict:
    """Official depther checkpoint (.pth, mmcv layout) -> state dict (numpy; read without torch)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"depth head {path!r} not found (official files: {head_file_name(DEPTHER_NAMES[0])}...)")
    from dinov2_jax.weights.pth import read_pth  # torch-free, as torch.load(weights_only=True)

    obj = read_pth(path)
    return obj.get("state_dict", obj)


def load_depther(name: str, weights: str | None = None, head: str | None = None, *, layers: int = 4,
                 dataset: str | None = None, dtype="float32"):
    """Backbone `name[:-3]` (see hub.load) + official depth head file (None: random head, logged).
    `_ld`: LinearDepther, blocks from the file's width. `_dd`: DPTDepther, depth range of `dataset`
    (default: "kitti" if the head file's name says so, else "nyu")."""
    if name not in DEPTHER_NAMES:
        raise ValueError(f"unknown depther {name!r}; valid names: {', '.join(DEPTHER_NAMES)}")
    backbone = hub.load(name[:-3], weights, dtype=dtype, attn_impl=hub.default_attn_impl(dtype))
    if head is None:
        logger.warning("load_depther(%r): no head given -> RANDOM depth head (depths are meaningless)", name)
    if name.endswith("_dd"):
        dataset = dataset or ("kitti" if head and "kitti" in os.path.basename(head) else "nyu")
        if dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
        lo, hi = dpt.DEPTH_RANGES[dataset]
        logger.info("DPT depther %s: depth range %s-%s m (%s)", name, lo, hi, dataset)
        h = (dpt.DPTDepthHead(backbone.embed_dim, lo, hi, rngs=nnx.Rngs(0)) if head is None
             else dpt.head_from_state_dict(load_depth_checkpoint(head), lo, hi))
        return DPTDepther(backbone, h)
    if head is None:
        out_index = official_out_index(backbone.n_blocks, layers)
        return LinearDepther(backbone, LinearDepthHead(2 * backbone.embed_dim * len(out_index), rngs=nnx.Rngs(0)),
                             out_index)
    h = head_from_state_dict(load_depth_checkpoint(head))
    n = h.in_channels // (2 * backbone.embed_dim)
    return LinearDepther(backbone, h, official_out_index(backbone.n_blocks, n))
