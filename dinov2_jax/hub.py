"""torch.hub-style entry points: `load("dinov2_vits14_reg", weights=PATH) -> DinoVisionTransformer`.

The 8 backbone names and their architectures are the presets of `dinov2_jax.models.config.ViTConfig`
(official `hubconf.py`). Loading goes through `dinov2_jax.pretrained` (every checkpoint format, strict,
the architecture checked against the requested name); this module keeps the small CLI-facing helpers.
`weights` None gives a random init (logged loudly); a hub name as `weights` is looked up in the torch hub
cache (downloaded when online).
"""
from __future__ import annotations

import logging

from dinov2_jax.models.config import HUB_NAMES, LAYOUT_KEYS, ViTConfig

logger = logging.getLogger("dinov2_jax.hub")

ARCH_KEYS = LAYOUT_KEYS  # fields that define the weights' layout; a mismatch with the file is an error


def hub_arch(name: str) -> dict:
    """Constructor kwargs of DinoVisionTransformer for a hub name (official hubconf table)."""
    return ViTConfig.preset(name).kwargs()


def hub_name_for_arch(arch: dict) -> str | None:
    """The hub name whose weights layout matches `arch`, or None."""
    for name in HUB_NAMES:
        if not ViTConfig.preset(name).layout_differences(arch):
            return name
    return None


def arch_differences(expected: dict, found: dict) -> list[str]:
    """Human-readable list of layout fields that differ (fields missing from `found` are ignored)."""
    return ViTConfig.from_kwargs(expected).layout_differences(found)


def create_model(name_or_arch, *, dtype="float32", attn_impl: str = "xla", seed: int = 0):
    """Random-init backbone for a hub name, a ViTConfig or an arch dict (kwargs of DinoVisionTransformer)."""
    if isinstance(name_or_arch, str):
        cfg = ViTConfig.preset(name_or_arch)
    elif isinstance(name_or_arch, ViTConfig):
        cfg = name_or_arch
    else:
        cfg = ViTConfig.from_kwargs(name_or_arch)
    return cfg.build(seed=seed, dtype=dtype, attn_impl=attn_impl)


def load(name: str | None, weights: str | None = None, *, dtype="float32", attn_impl: str = "xla"):
    """Build the backbone `name` (one of HUB_NAMES) and load `weights` (any format `from_pretrained` reads).

    name None: take the architecture from the weights. Returns the NNX module (its `.arch` holds the
    constructor kwargs). Loading is strict: every parameter of the model must be in the file and vice versa.
    """
    from dinov2_jax.pretrained import from_pretrained

    if name is not None and name not in HUB_NAMES:
        raise ValueError(f"unknown model name {name!r}; valid names: {', '.join(HUB_NAMES)}")
    if weights is None:
        if name is None:
            raise ValueError("give a model name (e.g. dinov2_vits14) or weights")
        logger.warning("hub.load(%r): no weights given -> RANDOM INITIALISATION (features are meaningless)", name)
        return create_model(name, dtype=dtype, attn_impl=attn_impl)
    return from_pretrained(weights, arch=name, dtype=dtype, attn_impl=attn_impl).model


def default_attn_impl(dtype) -> str:
    """Fused cuDNN attention (via "auto" on GPU) only for 16-bit compute: JAX's cuDNN kernel rejects float32."""
    return "auto" if str(dtype) in ("bfloat16", "float16") else "xla"


def load_for_eval(weights: str | None, arch: str | None, *, allow_random_init: bool = False, dtype="float32"):
    """CLI helper: weights required unless allow_random_init (then arch is required)."""
    if weights is None and not allow_random_init:
        raise SystemExit("--weights is required (an official .pth, a Hugging Face folder, a converted dir or a "
                         "hub name); "
                         "pass --allow-random-init with --arch to evaluate a random model")
    if weights is None and arch is None:
        raise SystemExit(f"--allow-random-init needs --arch (one of {', '.join(HUB_NAMES)})")
    return load(arch, weights, dtype=dtype, attn_impl=default_attn_impl(dtype))
