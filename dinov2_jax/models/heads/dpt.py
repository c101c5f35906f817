"""The official DPT depth head (`dinov2/hub/depthers.py` `_dd` models; `DPTHead` and its blocks in
`dinov2/hub/depth/decode_heads.py`), for inference with the released `*_{nyu,kitti}_dpt_head.pth` files.

Data flow, from 4 blocks' (un-normed patch tokens [B, h, w, D], cls token [B, D]):
  reassemble  per block i: Linear(2D -> D) + exact GELU on [patch ++ cls] ("project" readout), a 1x1 conv to
              C_i = D/8, D/4, D/2, D channels, then resized: x4 and x2 by transposed convs (kernel = stride),
              x1, and /2 by a 3x3 stride-2 conv -> grids 4h, 2h, h, ceil(h/2);
  convs       3x3 conv (no bias) of each to 256 channels;
  fusion      from the coarsest: out = RCU2(out + RCU1(skip resized to out)) then x2 bilinear (align_corners=True)
              and a 1x1 conv; RCU(x) = conv3x3(relu(conv3x3(relu(x)))) + x (pre-activation, no bias, no norm);
  project     3x3 conv + ReLU;
  depth       3x3 conv to 128, x2 bilinear (align_corners=True), 3x3 conv to 32, ReLU, 1x1 conv to 1;
              depth = relu(.) + min_depth, clamped to [min_depth, max_depth] and resized (bilinear) to the image.
Parameters are kept under the official state-dict names (`decode_head.` stripped) in torch layout (conv
weights [out, in, kh, kw]), so loading and saving a checkpoint is a key check. The depth range is the one the
official builder gives the head: (0.001, 10) for NYU weights, (0.001, 80) for KITTI.
"""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dinov2_jax.models.heads.spatial import center_pad, resize_bilinear, resize_bilinear_aligned
from dinov2_jax.weights.matching import mismatch_message

logger = logging.getLogger("dinov2_jax.models.heads.dpt")

CHANNELS = 256  # the official builder's `channels`
DEPTH_RANGES = {"nyu": (0.001, 10.0), "kitti": (0.001, 80.0)}


def param_shapes(embed_dim: int, channels: int = CHANNELS) -> dict[str, tuple[int, ...]]:
    """Official DPTHead state-dict names (without `decode_head.`) -> shapes, for a backbone of width embed_dim."""
    d, c = embed_dim, channels
    post = [d // 2 ** (3 - i) for i in range(4)]
    s: dict[str, tuple[int, ...]] = {}
    for i, ci in enumerate(post):
        s[f"reassemble_blocks.readout_projects.{i}.0.weight"] = (d, 2 * d)
        s[f"reassemble_blocks.readout_projects.{i}.0.bias"] = (d,)
        s[f"reassemble_blocks.projects.{i}.conv.weight"] = (ci, d, 1, 1)
        s[f"reassemble_blocks.projects.{i}.conv.bias"] = (ci,)
        s[f"convs.{i}.conv.weight"] = (c, ci, 3, 3)
    for i, k in ((0, 4), (1, 2), (3, 3)):
        # ConvTranspose2d weights are [in, out, k, k]; in = out here
        s[f"reassemble_blocks.resize_layers.{i}.weight"] = (post[i], post[i], k, k)
        s[f"reassemble_blocks.resize_layers.{i}.bias"] = (post[i],)
    for i in range(4):
        for unit in ((2,) if i == 0 else (1, 2)):  # the first fusion block has no skip input
            for conv in (1, 2):
                s[f"fusion_blocks.{i}.res_conv_unit{unit}.conv{conv}.conv.weight"] = (c, c, 3, 3)
        s[f"fusion_blocks.{i}.project.conv.weight"] = (c, c, 1, 1)
        s[f"fusion_blocks.{i}.project.conv.bias"] = (c,)
    s["project.conv.weight"], s["project.conv.bias"] = (c, c, 3, 3), (c,)
    for j, (o, i_, k) in ((0, (c // 2, c, 3)), (2, (32, c // 2, 3)), (4, (1, 32, 1))):
        s[f"conv_depth.head.{j}.weight"], s[f"conv_depth.head.{j}.bias"] = (o, i_, k, k), (o,)
    return s


def conv2d(x, w, b=None, stride: int = 1, padding: int = 0):
    """torch Conv2d on NHWC: x [B, H, W, Cin], w [Cout, Cin, kh, kw] -> [B, H', W', Cout]."""
    y = jax.lax.conv_general_dilated(x, w, (stride, stride), [(padding, padding)] * 2,
                                     dimension_numbers=("NHWC", "OIHW", "NHWC"), precision="highest")
    return y if b is None else y + b


def conv_transpose_k_eq_s(x, w, b):
    """torch ConvTranspose2d with kernel = stride, no padding (non-overlapping): x [B, h, w, Cin],
    w [Cin, Cout, k, k] -> [B, k h, k w, Cout]."""
    bsz, h, wd, _ = x.shape
    k = w.shape[2]
    y = jnp.einsum("bhwc,cokl->bhkwlo", x, w, precision="highest")
    return y.reshape(bsz, h * k, wd * k, w.shape[1]) + b


def dpt_depth(p: Mapping[str, jax.Array], feats: Sequence[tuple[jax.Array, jax.Array]], min_depth: float) -> jax.Array:
    """The head's forward: 4 blocks' (patches [B, h, w, D], cls [B, D]) -> depth [B, H', W'] (before clamping).
    `p` maps the official names (param_shapes) to arrays."""
    xs = []
    for i, (x, cls) in enumerate(feats):
        r = f"reassemble_blocks.readout_projects.{i}.0."
        x = jnp.concatenate([x, jnp.broadcast_to(cls[:, None, None, :], x.shape)], axis=-1)
        x = jax.nn.gelu(jnp.dot(x, p[r + "weight"].T, precision="highest") + p[r + "bias"], approximate=False)
        x = conv2d(x, p[f"reassemble_blocks.projects.{i}.conv.weight"], p[f"reassemble_blocks.projects.{i}.conv.bias"])
        rz = f"reassemble_blocks.resize_layers.{i}."
        if i in (0, 1):
            x = conv_transpose_k_eq_s(x, p[rz + "weight"], p[rz + "bias"])
        elif i == 3:
            x = conv2d(x, p[rz + "weight"], p[rz + "bias"], stride=2, padding=1)
        xs.append(conv2d(x, p[f"convs.{i}.conv.weight"], padding=1))

    def rcu(prefix, x):
        y = conv2d(jax.nn.relu(x), p[prefix + "conv1.conv.weight"], padding=1)
        return conv2d(jax.nn.relu(y), p[prefix + "conv2.conv.weight"], padding=1) + x

    out = None
    for i in range(4):
        f = f"fusion_blocks.{i}."
        if out is None:
            out = xs[-1]
        else:
            skip = xs[-(i + 1)]
            if skip.shape != out.shape:
                skip = resize_bilinear(skip, out.shape[1:3])
            out = out + rcu(f + "res_conv_unit1.", skip)
        out = rcu(f + "res_conv_unit2.", out)
        out = resize_bilinear_aligned(out, (2 * out.shape[1], 2 * out.shape[2]))
        out = conv2d(out, p[f + "project.conv.weight"], p[f + "project.conv.bias"])
    out = jax.nn.relu(conv2d(out, p["project.conv.weight"], p["project.conv.bias"], padding=1))
    out = conv2d(out, p["conv_depth.head.0.weight"], p["conv_depth.head.0.bias"], padding=1)
    out = resize_bilinear_aligned(out, (2 * out.shape[1], 2 * out.shape[2]))
    out = jax.nn.relu(conv2d(out, p["conv_depth.head.2.weight"], p["conv_depth.head.2.bias"], padding=1))
    out = conv2d(out, p["conv_depth.head.4.weight"], p["conv_depth.head.4.bias"])
    return jax.nn.relu(out[..., 0]) + min_depth


class DPTDepthHead(nnx.Module):
    """Parameters of the official DPT head (official names, torch layout) and its depth range."""

    def __init__(self, embed_dim: int, min_depth: float = DEPTH_RANGES["nyu"][0],
                 max_depth: float = DEPTH_RANGES["nyu"][1], *, rngs: nnx.Rngs | None = None,
                 weights: Mapping[str, np.ndarray] | None = None):
        self.embed_dim, self.min_depth, self.max_depth = embed_dim, float(min_depth), float(max_depth)
        shapes = param_shapes(embed_dim)
        if weights is None:  # torch's default conv/linear init: uniform +-1/sqrt(fan_in)
            key = (rngs or nnx.Rngs(0)).params()
            weights = {}
            for name, shape in shapes.items():
                key, sub = jax.random.split(key)
                w_shape = shapes[name.rsplit(".", 1)[0] + ".weight"]
                fan_in = w_shape[0] if "resize_layers.0" in name or "resize_layers.1" in name else \
                    int(np.prod(w_shape[1:]))
                bound = 1.0 / np.sqrt(fan_in)
                weights[name] = jax.random.uniform(sub, shape, jnp.float32, -bound, bound)
        self.weights = nnx.Dict({k: nnx.Param(jnp.asarray(weights[k], jnp.float32)) for k in shapes})

    def __call__(self, feats) -> jax.Array:
        """4 blocks' (patches [B, h, w, D], cls [B, D]) -> depth [B, 32 ceil(h/2), 32 ceil(w/2)] before clamping."""
        return dpt_depth({k: v[...] for k, v in self.weights.items()}, feats, self.min_depth)


def dpt_features(backbone, images: jax.Array, out_index: Sequence[int]):
    """images [B, H, W, 3] (multiples of the patch) -> per block (un-normed patches [B, h, w, D], cls [B, D])."""
    b, h, w, _ = images.shape
    p = backbone.patch_size
    outs = backbone.get_intermediate_layers(images, n=list(out_index), return_class_token=True, norm=False)
    return [(x.reshape(b, h // p, w // p, -1), cls) for x, cls in outs]


def predict_depth_dpt(backbone, head: DPTDepthHead, images: jax.Array, out_index: Sequence[int]) -> jax.Array:
    """The hub `_dd` depther's whole-image inference: images [B, H, W, 3] -> metres [B, H, W]."""
    x = center_pad(images, backbone.patch_size)
    d = jnp.clip(head(dpt_features(backbone, x, out_index)), head.min_depth, head.max_depth)
    return resize_bilinear(d[..., None], images.shape[1:3])[..., 0]


def head_from_state_dict(sd: Mapping, min_depth: float = DEPTH_RANGES["nyu"][0],
                         max_depth: float = DEPTH_RANGES["nyu"][1]) -> DPTDepthHead:
    """Official `*_dpt_head.pth` state dict ({"state_dict": ...} or flat; keys outside `decode_head.` ignored)
    -> DPTDepthHead. The backbone width comes from the file; every head key must be there with its shape."""
    sd = sd.get("state_dict", sd)
    head_sd = {k[len("decode_head."):]: v for k, v in sd.items() if k.startswith("decode_head.")}
    key = "reassemble_blocks.readout_projects.0.0.weight"
    if key not in head_sd:
        raise ValueError(f"not a DPT depth head checkpoint: no decode_head.{key} (keys: {sorted(sd)[:6]}...)")
    other = sorted(k for k in sd if not k.startswith("decode_head."))
    if other:
        logger.info("DPT checkpoint: ignoring %d keys outside decode_head (e.g. %s)", len(other), other[:3])
    get = lambda v: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v, np.float32)  # noqa: E731
    head_sd = {k: get(v) for k, v in head_sd.items()}
    want = param_shapes(head_sd[key].shape[0])
    msg = mismatch_message(
        "DPT depth head state dict", missing=[f"decode_head.{k}" for k in set(want) - set(head_sd)],
        unexpected=[f"decode_head.{k}" for k in set(head_sd) - set(want)],
        mis_shaped=[f"decode_head.{k}: file {head_sd[k].shape} vs {want[k]}" for k in set(want) & set(head_sd)
                    if head_sd[k].shape != want[k]])
    if msg:
        raise ValueError(msg)
    return DPTDepthHead(head_sd[key].shape[0], min_depth, max_depth, weights=head_sd)


def head_to_state_dict(head: DPTDepthHead) -> dict[str, np.ndarray]:
    """Inverse of head_from_state_dict, with the official `decode_head.` names."""
    return {f"decode_head.{k}": np.asarray(v[...], np.float32) for k, v in head.weights.items()}
