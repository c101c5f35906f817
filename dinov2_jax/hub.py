"""torch.hub-style entry points: `load("dinov2_vits14_reg", weights=PATH) -> DinoVisionTransformer`.

The 8 backbone names and their architectures mirror the official `hubconf.py` (`_make_dinov2_model`):
img_size 518, patch 14, init_values 1.0, block_chunks 0, ffn "mlp" (ViT-g: "swiglufused");
`_reg` models add 4 register tokens with antialiased pos-embed interpolation and offset 0.0
(others: no registers, offset 0.1, no antialias).

`weights` is an official hub `.pth` (converted in memory by `dinov2_jax.convert`), a directory written by
`python -m dinov2_jax.convert` (arch.json + params), or None (random init, logged loudly). The architecture
stored in / inferred from the weights must match the requested name, else a ValueError lists the
differences. The model is built from the weights' own architecture (arch.json, or inferred from the .pth
by the converter, which gives register models the hub's antialias / offset-0 interpolation), so e.g. a
converted training run keeps its interpolation settings. Download the official weights yourself (URL pattern:
https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_reg4_pretrain.pth); nothing is fetched here.
"""
from __future__ import annotations

import json
import logging
import os

from flax import nnx

logger = logging.getLogger("dinov2_jax.hub")

_SIZES = {  # hub letter -> (factory arch, embed_dim, depth, num_heads)
    "s": ("vit_small", 384, 12, 6),
    "b": ("vit_base", 768, 12, 12),
    "l": ("vit_large", 1024, 24, 16),
    "g": ("vit_giant2", 1536, 40, 24),
}
HUB_NAMES = tuple(f"dinov2_vit{s}14{r}" for s in "sblg" for r in ("", "_reg"))
# fields that define the weights' layout; a mismatch with the file is an error
ARCH_KEYS = ("in_chans", "patch_size", "embed_dim", "depth", "num_heads", "num_register_tokens", "ffn_layer", "img_size",
             "qkv_bias", "proj_bias", "ffn_bias", "init_values", "mlp_ratio")


def hub_arch(name: str) -> dict:
    """Constructor kwargs of DinoVisionTransformer for a hub name (official hubconf table)."""
    if name not in HUB_NAMES:
        raise ValueError(f"unknown model name {name!r}; valid names: {', '.join(HUB_NAMES)}")
    size = name[len("dinov2_vit")]
    reg = name.endswith("_reg")
    _, dim, depth, heads = _SIZES[size]
    return dict(img_size=518, patch_size=14, in_chans=3, embed_dim=dim, depth=depth, num_heads=heads,
                mlp_ratio=4.0, qkv_bias=True, ffn_bias=True, proj_bias=True, drop_path_rate=0.0,
                drop_path_uniform=False, init_values=1.0, ffn_layer="swiglufused" if size == "g" else "mlp",
                num_register_tokens=4 if reg else 0, interpolate_antialias=reg,
                interpolate_offset=0.0 if reg else 0.1)


def hub_name_for_arch(arch: dict) -> str | None:
    """The hub name whose weights layout matches `arch`, or None."""
    for name in HUB_NAMES:
        if not arch_differences(hub_arch(name), arch):
            return name
    return None


def _norm_ffn(v):
    return "swiglu" if v in ("swiglu", "swiglufused") else v  # same math and parameters


def arch_differences(expected: dict, found: dict) -> list[str]:
    """Human-readable list of layout fields that differ (fields missing from `found` are ignored)."""
    out = []
    for k in ARCH_KEYS:
        if k not in found or k not in expected:
            continue
        a, b = expected[k], found[k]
        if k == "ffn_layer":
            a, b = _norm_ffn(a), _norm_ffn(b)
        if k == "init_values":  # gammas come from the file: only "has LayerScale or not" matters
            a, b = a is not None, b is not None
        if k == "mlp_ratio":
            a, b = float(a), float(b)
        if a != b:
            out.append(f"{k}: expected {expected[k]!r}, weights have {found[k]!r}")
    return out


def create_model(name_or_arch, *, dtype="float32", attn_impl: str = "xla", seed: int = 0):
    """Random-init backbone for a hub name or an arch dict (kwargs of DinoVisionTransformer)."""
    from dinov2_jax.models.vision_transformer import DinoVisionTransformer

    arch = hub_arch(name_or_arch) if isinstance(name_or_arch, str) else dict(name_or_arch)
    arch.update(dtype=dtype, attn_impl=attn_impl)
    arch.pop("remat", None)
    return DinoVisionTransformer(**arch, rngs=nnx.Rngs(seed))


def read_arch(path: str) -> tuple[dict, dict | None]:
    """Architecture stored in / inferred from weights -> (arch, backbone state dict or None for a dir)."""
    from dinov2_jax import convert

    if os.path.isdir(path):
        arch_path = os.path.join(path, "arch.json")
        if not os.path.exists(arch_path):
            raise FileNotFoundError(f"{path!r} has no arch.json: not a directory written by "
                                    "`python -m dinov2_jax.convert`")
        with open(arch_path) as f:
            return json.load(f), None
    if os.path.isfile(path):
        if not path.endswith((".pth", ".pt")):
            raise ValueError(f"weights file {path!r} is not a .pth; give an official .pth or a directory "
                             "written by `python -m dinov2_jax.convert`")
        import torch

        obj = torch.load(path, map_location="cpu", weights_only=True)
        sd = convert.split_checkpoint(obj)["backbone"]
        return convert.infer_arch(sd), sd
    raise FileNotFoundError(f"weights {path!r} not found (expected an official .pth or a converted directory)")


def load(name: str | None, weights: str | None = None, *, dtype="float32", attn_impl: str = "xla"):
    """Build the backbone `name` (one of HUB_NAMES) and load `weights` (.pth / converted dir / None).

    name None: take the architecture from the weights (converted dir's arch.json or inferred from the .pth).
    Returns the NNX module (its `.arch` holds the constructor kwargs). Loading is strict: every parameter
    of the model must be in the file and vice versa.
    """
    from dinov2_jax import convert

    if name is not None and name not in HUB_NAMES:
        raise ValueError(f"unknown model name {name!r}; valid names: {', '.join(HUB_NAMES)}")
    if weights is None:
        if name is None:
            raise ValueError("give a model name (e.g. dinov2_vits14) or weights")
        logger.warning("hub.load(%r): no weights given -> RANDOM INITIALISATION (features are meaningless)", name)
        return create_model(name, dtype=dtype, attn_impl=attn_impl)
    file_arch, state_dict = read_arch(weights)
    if name is not None:
        diffs = arch_differences(hub_arch(name), file_arch)
        if diffs:
            found = hub_name_for_arch(file_arch)
            hint = f" (the weights look like {found!r})" if found else ""
            raise ValueError(f"weights {weights!r} do not match {name!r}{hint}: " + "; ".join(diffs))
    if state_dict is None:
        model = convert.load_converted(weights, dtype=dtype, attn_impl=attn_impl, remat="none")
    else:
        model = create_model(file_arch, dtype=dtype, attn_impl=attn_impl)
        convert.load_torch_state_dict(model, state_dict)
    logger.info("loaded %s from %s", name or hub_name_for_arch(file_arch) or "backbone", weights)
    return model


def default_attn_impl(dtype) -> str:
    """Fused cuDNN attention (via "auto" on GPU) only for 16-bit compute: JAX's cuDNN kernel rejects float32."""
    return "auto" if str(dtype) in ("bfloat16", "float16") else "xla"


def load_for_eval(weights: str | None, arch: str | None, *, allow_random_init: bool = False, dtype="float32"):
    """CLI helper: weights required unless allow_random_init (then arch is required)."""
    if weights is None and not allow_random_init:
        raise SystemExit("--weights is required (a converted dir or an official .pth); "
                         "pass --allow-random-init with --arch to evaluate a random model")
    if weights is None and arch is None:
        raise SystemExit(f"--allow-random-init needs --arch (one of {', '.join(HUB_NAMES)})")
    return load(arch, weights, dtype=dtype, attn_impl=default_attn_impl(dtype))
