"""The official linear depth head (`dinov2/hub/depthers.py` `_ld` models, `dinov2/hub/depth/decode_heads.py`
BNHead with classify=True): per chosen block, [patch tokens ++ cls token broadcast] (2D channels, no final
norm), each resized bilinearly to 4x the patch grid, concatenated, a 1x1 conv to 256 bins, and the depth is
the bin centres weighted by relu(logits) + 0.1 normalised ("linear" norm strategy, uniform "UD" bins).
The hub clamps to [min_depth, max_depth] and resizes (bilinear) to the input size; the input is padded to
a multiple of the patch size, centred (`CenterPadding`).

Note: the official `_make_dinov2_linear_depth_head` builds the head with min_depth=0.001, max_depth=80
whatever the weights (NYU or KITTI): the bins are linspace(0.001, 80, 256). HUB_DEPTH_RANGE is that.
Official checkpoint keys: decode_head.conv_depth.{weight [256, C, 1, 1], bias [256]}.
"""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dinov2_jax.models.heads.spatial import center_pad, resize_bilinear

logger = logging.getLogger("dinov2_jax.models.heads.depth")

N_BINS = 256
UPSAMPLE = 4
HUB_DEPTH_RANGE = (0.001, 80.0)
# blocks read by the 4-layer hub depthers, by backbone depth (official `out_index`)
OUT_INDEX_4 = {12: (2, 5, 8, 11), 24: (4, 11, 17, 23), 40: (9, 19, 29, 39)}


def official_out_index(depth: int, layers: int = 4) -> tuple[int, ...]:
    """Blocks the official `_ld` models use: layers=1 -> the last; layers=4 -> the table (hub sizes only)."""
    if layers == 1:
        return (depth - 1,)
    if layers != 4:
        raise ValueError(f"layers={layers}: the official depth heads use 1 or 4 layers")
    if depth not in OUT_INDEX_4:
        raise ValueError(f"no official 4-layer indices for a {depth}-block backbone; pass out_index explicitly")
    return OUT_INDEX_4[depth]


def depth_features(backbone, images: jax.Array, out_index: Sequence[int]) -> jax.Array:
    """images [B, H, W, 3] (H, W multiples of the patch) -> [B, h, w, len(out_index) * 2D]: per block the
    un-normed patch tokens then the cls token broadcast, blocks in order, at patch resolution.
    (The 4x resize commutes with the channel concat, so the head resizes once.)"""
    b, h, w, _ = images.shape
    p = backbone.patch_size
    outs = backbone.get_intermediate_layers(images, n=list(out_index), return_class_token=True, norm=False)
    parts = []
    for patches, cls in outs:
        grid = patches.reshape(b, h // p, w // p, -1)
        parts += [grid, jnp.broadcast_to(cls[:, None, None, :], grid.shape)]
    return jnp.concatenate(parts, axis=-1)


def bins_to_depth(logits: jax.Array, min_depth: float, max_depth: float) -> jax.Array:
    """[..., n_bins] -> [...]: "linear" normalisation (relu + 0.1, sum to 1) over uniform bin centres."""
    w = jax.nn.relu(logits) + 0.1
    w = w / w.sum(-1, keepdims=True)
    bins = jnp.linspace(min_depth, max_depth, logits.shape[-1], dtype=logits.dtype)
    return w @ bins


class LinearDepthHead(nnx.Module):
    """Features [B, h, w, C] (from depth_features) -> depth [B, 4h, 4w] before clamping."""

    def __init__(self, in_channels: int, n_bins: int = N_BINS, min_depth: float = HUB_DEPTH_RANGE[0],
                 max_depth: float = HUB_DEPTH_RANGE[1], upsample: int = UPSAMPLE, *, rngs: nnx.Rngs):
        self.in_channels, self.n_bins, self.upsample = in_channels, n_bins, upsample
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)
        bound = 1.0 / np.sqrt(in_channels)  # torch Conv2d default init (uniform +-1/sqrt(fan_in))
        k1, k2 = jax.random.split(rngs.params())
        self.kernel = nnx.Param(jax.random.uniform(k1, (in_channels, n_bins), jnp.float32, -bound, bound))
        self.bias = nnx.Param(jax.random.uniform(k2, (n_bins,), jnp.float32, -bound, bound))

    def __call__(self, feats: jax.Array) -> jax.Array:
        _, h, w, _ = feats.shape
        x = resize_bilinear(feats.astype(jnp.float32), (h * self.upsample, w * self.upsample))
        return bins_to_depth(x @ self.kernel[...] + self.bias[...], self.min_depth, self.max_depth)


def predict_depth(backbone, head: LinearDepthHead, images: jax.Array, out_index: Sequence[int]) -> jax.Array:
    """The hub depther's whole-image inference: images [B, H, W, 3] -> depth [B, H, W] (clamped)."""
    x = center_pad(images, backbone.patch_size)
    d = jnp.clip(head(depth_features(backbone, x, out_index)), head.min_depth, head.max_depth)
    return resize_bilinear(d[..., None], images.shape[1:3])[..., 0]


def head_from_state_dict(sd: Mapping, min_depth: float = HUB_DEPTH_RANGE[0],
                         max_depth: float = HUB_DEPTH_RANGE[1]) -> LinearDepthHead:
    """Official depther checkpoint ({"state_dict": ...} or flat; other keys such as backbone.* ignored)."""
    sd = sd.get("state_dict", sd)
    keys = {"decode_head.conv_depth.weight", "decode_head.conv_depth.bias"}
    if not keys <= set(sd):
        raise ValueError(f"not a linear depth head checkpoint: needs {sorted(keys)} (has {sorted(sd)[:8]}...)")
    other = sorted(set(sd) - keys)
    if other:
        logger.info("depth checkpoint: ignoring %d other keys (e.g. %s)", len(other), other[:3])
    get = lambda k: np.asarray(sd[k].detach().cpu().numpy() if hasattr(sd[k], "detach") else sd[k], np.float32)  # noqa: E731
    w, b = get("decode_head.conv_depth.weight"), get("decode_head.conv_depth.bias")
    if w.ndim != 4 or w.shape[2:] != (1, 1):
        raise ValueError(f"conv_depth.weight {w.shape}: expected a 1x1 conv [n_bins, C, 1, 1]")
    head = LinearDepthHead(w.shape[1], w.shape[0], min_depth, max_depth, rngs=nnx.Rngs(0))
    head.kernel[...], head.bias[...] = w[:, :, 0, 0].T, b
    return head


def head_to_state_dict(head: LinearDepthHead) -> dict[str, np.ndarray]:
    return {"decode_head.conv_depth.weight": np.asarray(head.kernel[...]).T[:, :, None, None].copy(),
            "decode_head.conv_depth.bias": np.asarray(head.bias[...])}
