"""Linear semantic segmentation heads on frozen patch tokens (official `dinov2/eval/segmentation`, mmseg
`BNHead`): BatchNorm over the channels, then a 1x1 convolution to class logits, at patch resolution.

  linear: the last block's patch tokens             -> channels D
  ms:     the last 4 blocks' patch tokens concatenated (oldest first, as mmseg's resize_concat) -> 4D
Tokens are final-normed (`get_intermediate_layers(..., norm=True)`), no cls token. Logits are upsampled
bilinearly (align_corners=False) to the label resolution for the loss and for prediction.
Official checkpoint keys: decode_head.bn.{weight,bias,running_mean,running_var}, decode_head.conv_seg.{weight,bias}.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dinov2_jax.models.heads.spatial import center_pad, resize_bilinear

HEAD_LAYERS = {"linear": 1, "ms": 4}
BN_EPS = 1e-5
BN_MOMENTUM = 0.1  # torch convention: running = (1 - m) * running + m * batch


def patch_features(backbone, images: jax.Array, n_layers: int) -> jax.Array:
    """images [B, H, W, 3] -> final-normed patch tokens of the last n_layers blocks, concatenated
    (oldest first) on channels: [B, ceil(H/p), ceil(W/p), n_layers * D]. Sides that are not multiples of
    the patch are zero-padded, centred, as the official segmenter's CenterPadding pre-hook does."""
    images = center_pad(images, backbone.patch_size)
    b, h, w, _ = images.shape
    p = backbone.patch_size
    outs = backbone.get_intermediate_layers(images, n=n_layers)
    return jnp.concatenate([o.reshape(b, h // p, w // p, -1) for o in outs], axis=-1)


class BatchNorm(nnx.Module):
    """BatchNorm over the last axis with torch semantics (biased batch variance for normalising,
    unbiased for the running estimate)."""

    def __init__(self, channels: int):
        self.scale = nnx.Param(jnp.ones((channels,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))
        self.running_mean = nnx.BatchStat(jnp.zeros((channels,), jnp.float32))
        self.running_var = nnx.BatchStat(jnp.ones((channels,), jnp.float32))

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """[..., C] -> [..., C]; train=True normalises with batch statistics and updates the running ones."""
        if train:
            axes = tuple(range(x.ndim - 1))
            mean, var = x.mean(axes), x.var(axes)
            n = int(np.prod([x.shape[a] for a in axes]))
            self.running_mean[...] = (1 - BN_MOMENTUM) * self.running_mean[...] + BN_MOMENTUM * mean
            self.running_var[...] = (1 - BN_MOMENTUM) * self.running_var[...] + BN_MOMENTUM * var * n / max(n - 1, 1)
        else:
            mean, var = self.running_mean[...], self.running_var[...]
        return (x - mean) * jax.lax.rsqrt(var + BN_EPS) * self.scale[...] + self.bias[...]


class SegmentationHead(nnx.Module):
    """BN + 1x1 conv: features [B, h, w, C] -> logits [B, h, w, num_classes] (patch resolution)."""

    def __init__(self, in_channels: int, num_classes: int, *, rngs: nnx.Rngs):
        self.in_channels, self.num_classes = in_channels, num_classes
        self.bn = BatchNorm(in_channels)
        # mmseg's conv_seg init: normal(std=0.01), zero bias
        self.kernel = nnx.Param(0.01 * jax.random.normal(rngs.params(), (in_channels, num_classes), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_classes,), jnp.float32))

    def __call__(self, feats: jax.Array, train: bool = False) -> jax.Array:
        x = self.bn(feats.astype(jnp.float32), train)
        return x @ self.kernel[...] + self.bias[...]


def segment(backbone, head: SegmentationHead, images: jax.Array, n_layers: int,
            out_size: tuple[int, int] | None = None) -> jax.Array:
    """Whole-image inference: images [B, H, W, 3] -> logits [B, H', W', K] upsampled to out_size (default H, W;
    with padding, the padded grid's logits are stretched over the unpadded image, as mmseg's encode_decode)."""
    logits = head(patch_features(backbone, images, n_layers))
    return resize_bilinear(logits, out_size or images.shape[1:3])


def head_from_state_dict(sd: Mapping) -> SegmentationHead:
    """Official (mmseg) checkpoint -> SegmentationHead. Accepts {"state_dict": ...} and the
    `decode_head.` prefix; conv_seg.weight is [K, C, 1, 1]."""
    sd = sd.get("state_dict", sd)
    sd = {k[len("decode_head."):] if k.startswith("decode_head.") else k: v for k, v in sd.items()}
    need = ["bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "conv_seg.weight", "conv_seg.bias"]
    missing = [k for k in need if k not in sd]
    if missing:
        raise ValueError(f"not a BNHead segmentation checkpoint: missing {missing} (keys: {sorted(sd)[:8]}...)")
    a = {k: np.asarray(sd[k].detach().cpu().numpy() if hasattr(sd[k], "detach") else sd[k], np.float32) for k in need}
    w = a["conv_seg.weight"]
    if w.ndim != 4 or w.shape[2:] != (1, 1):
        raise ValueError(f"conv_seg.weight {w.shape}: expected a 1x1 conv [K, C, 1, 1]")
    head = SegmentationHead(w.shape[1], w.shape[0], rngs=nnx.Rngs(0))
    head.bn.scale[...], head.bn.bias[...] = a["bn.weight"], a["bn.bias"]
    head.bn.running_mean[...], head.bn.running_var[...] = a["bn.running_mean"], a["bn.running_var"]
    head.kernel[...], head.bias[...] = w[:, :, 0, 0].T, a["conv_seg.bias"]
    return head


def head_to_state_dict(head: SegmentationHead) -> dict[str, np.ndarray]:
    """Inverse of head_from_state_dict, with the official `decode_head.` key names."""
    g = lambda v: np.asarray(v[...], np.float32)  # noqa: E731
    return {"decode_head.bn.weight": g(head.bn.scale), "decode_head.bn.bias": g(head.bn.bias),
            "decode_head.bn.running_mean": g(head.bn.running_mean),
            "decode_head.bn.running_var": g(head.bn.running_var),
            "decode_head.conv_seg.weight": g(head.kernel).T[:, :, None, None].copy(),
            "decode_head.conv_seg.bias": g(head.bias)}


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Start offsets of mmseg's sliding windows along one axis (the last window is shifted to end at `size`)."""
    if size < crop:
        raise ValueError(f"image side {size} is smaller than the sliding window {crop}; use a smaller crop")
    n = max(size - crop + stride - 1, 0) // stride + 1
    return [max(min(i * stride + crop, size) - crop, 0) for i in range(n)]


def slide_logits(logits_fn, image, crop: int, stride: int) -> np.ndarray:
    """Sliding-window inference (mmseg `slide_inference`): image [H, W, 3] -> mean of the overlapping
    windows' logits [H, W, K]; logits_fn maps crops [n, crop, crop, 3] -> logits [n, crop, crop, K]."""
    image = np.asarray(image)
    h, w = image.shape[:2]
    boxes = [(y, x) for y in window_starts(h, crop, stride) for x in window_starts(w, crop, stride)]
    out = np.asarray(logits_fn(np.stack([image[y:y + crop, x:x + crop] for y, x in boxes])), np.float32)
    acc = np.zeros((h, w, out.shape[-1]), np.float32)
    count = np.zeros((h, w, 1), np.float32)
    for (y, x), o in zip(boxes, out):
        acc[y:y + crop, x:x + crop] += o
        count[y:y + crop, x:x + crop] += 1
    return acc / count
