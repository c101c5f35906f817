"""The official ImageNet linear classifier heads (`dinov2/hub/classifiers.py`).

A head is one `nn.Linear((1 + layers) * D, 1000)` on a feature vector built from the frozen backbone:
  layers=1 ("linear"):  [cls, mean(patch)] of the last block (final norm applied)       -> [B, 2D]
  layers=4 ("linear4"): [cls_1, cls_2, cls_3, cls_4, mean(patch_4)] of the last 4 blocks -> [B, 5D]
(cls_i / patch_i from `get_intermediate_layers(n=4, return_class_token=True)`, each final-normed).
The official files `*_linear_head.pth` / `*_linear4_head.pth` hold a state dict {"weight" [1000, in],
"bias" [1000]}.
"""
from __future__ import annotations

import os
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dinov2_jax.models.layers.linear import Linear

NUM_IMAGENET_CLASSES = 1000


def classifier_input(backbone, images: jax.Array, layers: int) -> jax.Array:
    """images [B, H, W, 3] -> the official linear-head input [B, (1 + layers) * D]."""
    if layers == 1:
        out = backbone.forward_features(images)
        return jnp.concatenate([out["x_norm_clstoken"], out["x_norm_patchtokens"].mean(axis=1)], axis=-1)
    if layers == 4:
        x = backbone.get_intermediate_layers(images, n=4, return_class_token=True)
        return jnp.concatenate([x[0][1], x[1][1], x[2][1], x[3][1], x[3][0].mean(axis=1)], axis=-1)
    raise ValueError(f"layers={layers}: the official linear heads use 1 or 4 layers")


class LinearClassifierHead(nnx.Module):
    """nn.Linear((1 + layers) * embed_dim, num_classes); `layers` says how its input is built."""

    def __init__(self, embed_dim: int, layers: int = 4, num_classes: int = NUM_IMAGENET_CLASSES, *,
                 rngs: nnx.Rngs):
        if layers not in (1, 4):
            raise ValueError(f"layers={layers}: the official linear heads use 1 or 4 layers")
        self.embed_dim, self.layers, self.num_classes = embed_dim, layers, num_classes
        self.linear = Linear((1 + layers) * embed_dim, num_classes, rngs=rngs)

    def __call__(self, linear_input: jax.Array) -> jax.Array:
        """[B, (1 + layers) * D] -> logits [B, num_classes]."""
        return self.linear(linear_input)


class LinearClassifier(nnx.Module):
    """Backbone + official linear head: images [B, H, W, 3] -> logits [B, num_classes]."""

    def __init__(self, backbone, head: LinearClassifierHead):
        if head.embed_dim != backbone.embed_dim:
            raise ValueError(f"head expects embed_dim {head.embed_dim}, backbone has {backbone.embed_dim}")
        self.backbone, self.head = backbone, head

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.head(classifier_input(self.backbone, images, self.head.layers))


def head_from_state_dict(sd: Mapping, embed_dim: int) -> LinearClassifierHead:
    """Official head state dict {"weight" [C, (1+layers)*D], "bias" [C]} -> LinearClassifierHead.

    `layers` is read from the weight's input width ((1 + layers) * embed_dim)."""
    keys = set(sd)
    if keys != {"weight", "bias"}:
        raise ValueError(f"a linear head state dict has exactly the keys 'weight' and 'bias'; got {sorted(keys)}")
    w = np.asarray(_to_numpy(sd["weight"]), np.float32)
    b = np.asarray(_to_numpy(sd["bias"]), np.float32)
    if w.ndim != 2 or b.shape != (w.shape[0],):
        raise ValueError(f"head weight {w.shape} / bias {b.shape}: expected [C, in] and [C]")
    if w.shape[1] % embed_dim or w.shape[1] // embed_dim - 1 not in (1, 4):
        raise ValueError(f"head input width {w.shape[1]} is not 2x or 5x the backbone's embed_dim {embed_dim} "
                         "(linear / linear4 heads); is it the head of another model size?")
    head = LinearClassifierHead(embed_dim, w.shape[1] // embed_dim - 1, w.shape[0], rngs=nnx.Rngs(0))
    head.linear.kernel[...] = jnp.asarray(w.T)
    head.linear.bias[...] = jnp.asarray(b)
    return head


def head_to_state_dict(head: LinearClassifierHead) -> dict[str, np.ndarray]:
    """Inverse of head_from_state_dict: {"weight" [C, in], "bias" [C]} (numpy, official layout)."""
    return {"weight": np.asarray(head.linear.kernel[...]).T.copy(), "bias": np.asarray(head.linear.bias[...])}


def _to_numpy(v):
    return v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)


def load_head_file(path: str, embed_dim: int) -> LinearClassifierHead:
    """Official `*_linear[4]_head.pth` (read without torch) or an `.npz` with weight/bias -> head."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"classifier head {path!r} not found (download e.g. "
                                "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_linear4_head.pth)")
    if path.endswith(".npz"):
        with np.load(path) as d:
            return head_from_state_dict({k: d[k] for k in d.files}, embed_dim)
    if not path.endswith((".pth", ".pt")):
        raise ValueError(f"classifier head {path!r}: expected an official .pth or an .npz with weight/bias")
    from dinov2_jax.weights.pth import read_pth  # torch-free, same result as torch.load(weights_only=True)

    return head_from_state_dict(read_pth(path), embed_dim)


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in output order (shipped text file, from torchvision's list)."""
    with open(os.path.join(os.path.dirname(__file__), "imagenet_classes.txt")) as f:
        names = [line.rstrip("\n") for line in f]
    assert len(names) == NUM_IMAGENET_CLASSES, len(names)
    return names


def top_k(logits, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """logits [B, C] -> (indices [B, k] by decreasing score, softmax probabilities [B, k])."""
    logits = np.asarray(logits, np.float64)
    idx = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return idx, np.take_along_axis(p, idx, axis=-1)
