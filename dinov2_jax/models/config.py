"""Frozen architecture description of a DINOv2 backbone, with the 8 official hub presets.

`ViTConfig` holds the fields that define the weights' layout and the forward math (sizes, biases,
LayerScale, FFN type, registers, position-embedding interpolation). Runtime choices that do not change
the parameters (attention backend, compute dtype, remat, scan, stochastic depth) are arguments of
`build()`, so one config describes a checkpoint whatever the machine it runs on.

    cfg = ViTConfig.preset("dinov2_vits14_reg")
    model = cfg.build(dtype="bfloat16")            # random init
    abstract = cfg.build_abstract()                # shapes only, nothing allocated

Presets follow the official `hubconf.py` (`_make_dinov2_model`): img_size 518, patch 14, init_values 1.0,
ffn "mlp" (ViT-g: "swiglufused"); `_reg` models add 4 registers and interpolate the position embedding
by size with antialias (offset 0.0); the others use offset 0.1 without antialias.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from flax import nnx

# official arch name (`student.arch`, `vit_small(...)`) -> (embed_dim, depth, num_heads)
ARCH_SIZES = {"vit_small": (384, 12, 6), "vit_base": (768, 12, 12), "vit_large": (1024, 24, 16),
              "vit_giant2": (1536, 40, 24)}
# hub letter -> arch name
_HUB_ARCH = {"s": "vit_small", "b": "vit_base", "l": "vit_large", "g": "vit_giant2"}
HUB_NAMES = tuple(f"dinov2_vit{s}14{r}" for s in "sblg" for r in ("", "_reg"))
# DinoVisionTransformer kwargs that do not change the parameters (passed to build())
RUNTIME_KEYS = ("drop_path_rate", "drop_path_uniform", "attn_impl", "dtype", "remat", "scan_blocks")
# fields that define the weights' layout: a difference with a checkpoint is a load error
LAYOUT_KEYS = ("in_chans", "patch_size", "embed_dim", "depth", "num_heads", "num_register_tokens", "ffn_layer",
               "img_size", "qkv_bias", "proj_bias", "ffn_bias", "init_values", "mlp_ratio")
# how the position embedding is resampled at other image sizes
INTERPOLATIONS = ("official", "transformers")


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Architecture of a `DinoVisionTransformer` (every constructor argument that is not runtime)."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    ffn_bias: bool = True
    proj_bias: bool = True
    init_values: float | None = None
    ffn_layer: str = "mlp"
    num_register_tokens: int = 0
    interpolate_antialias: bool = False
    interpolate_offset: float = 0.1

    # ------------------------------------------------------------------ constructors
    @classmethod
    def preset(cls, name: str) -> "ViTConfig":
        """The official hub backbone `name` (one of HUB_NAMES)."""
        if name not in HUB_NAMES:
            raise ValueError(f"unknown model name {name!r}; valid names: {', '.join(HUB_NAMES)}")
        dim, depth, heads = ARCH_SIZES[_HUB_ARCH[name[len("dinov2_vit")]]]
        reg = name.endswith("_reg")
        return cls(img_size=518, patch_size=14, embed_dim=dim, depth=depth, num_heads=heads, init_values=1.0,
                   ffn_layer="swiglufused" if name.startswith("dinov2_vitg") else "mlp",
                   num_register_tokens=4 if reg else 0, interpolate_antialias=reg,
                   interpolate_offset=0.0 if reg else 0.1)

    @classmethod
    def from_arch(cls, arch: str, **fields) -> "ViTConfig":
        """An official arch name (`vit_small`, `vit_base`, `vit_large`, `vit_giant2`; a `_memeff` suffix is
        ignored) with its sizes, overridden by `fields` (e.g. `patch_size=14, embed_dim=96` for a tiny model)."""
        name = arch.removesuffix("_memeff")
        if name not in ARCH_SIZES:
            raise ValueError(f"unknown arch {arch!r}; choose one of {tuple(ARCH_SIZES)}")
        dim, depth, heads = ARCH_SIZES[name]
        return cls.from_kwargs({"embed_dim": dim, "depth": depth, "num_heads": heads, **fields})

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> "ViTConfig":
        """From DinoVisionTransformer kwargs / an `arch.json` (runtime keys are ignored, unknown keys are errors)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(kwargs) - fields - set(RUNTIME_KEYS)
        if unknown:
            raise ValueError(f"unknown architecture fields {sorted(unknown)}; valid: {sorted(fields)}")
        kw = {k: v for k, v in kwargs.items() if k in fields}
        if "mlp_ratio" in kw:
            kw["mlp_ratio"] = float(kw["mlp_ratio"])
        if "interpolate_offset" in kw:
            kw["interpolate_offset"] = float(kw["interpolate_offset"])
        return cls(**kw)

    def kwargs(self) -> dict:
        """DinoVisionTransformer constructor kwargs (JSON-able)."""
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "ViTConfig":
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ comparisons
    def layout_differences(self, found: "ViTConfig | Mapping[str, Any]") -> list[str]:
        """Human-readable layout fields where `found` (the weights) differs from `self` (what was asked)."""
        other = found.kwargs() if isinstance(found, ViTConfig) else dict(found)
        mine = self.kwargs()
        out = []
        for k in LAYOUT_KEYS:
            if k not in other:
                continue
            a, b = mine[k], other[k]
            if k == "ffn_layer":  # swiglu and swiglufused: same math and parameters
                a, b = ("swiglu" if v in ("swiglu", "swiglufused") else v for v in (a, b))
            if k == "init_values":  # gammas come from the file: only "has LayerScale or not" matters
                a, b = bool(a), bool(b)
            if k == "mlp_ratio":
                a, b = float(a), float(b)
            if a != b:
                out.append(f"{k}: expected {mine[k]!r}, weights have {other[k]!r}")
        return out

    def hub_name(self) -> str | None:
        """The hub name with this weights layout, or None."""
        for name in HUB_NAMES:
            if not ViTConfig.preset(name).layout_differences(self):
                return name
        return None

    def with_interpolation(self, mode: str) -> "ViTConfig":
        """Position-embedding resampling of the official code ("official": registers -> size + antialias,
        others -> offset 0.1) or of transformers ("transformers": `Dinov2Model` by target size, bicubic,
        no antialias; `Dinov2WithRegistersModel` by size with antialias)."""
        if mode not in INTERPOLATIONS:
            raise ValueError(f"unknown position-embedding interpolation {mode!r}; choose one of {INTERPOLATIONS}")
        reg = self.num_register_tokens > 0
        if mode == "official":
            return self.replace(interpolate_antialias=reg, interpolate_offset=0.0 if reg else 0.1)
        return self.replace(interpolate_antialias=reg, interpolate_offset=0.0)

    # ------------------------------------------------------------------ building
    def build(self, *, rngs: nnx.Rngs | None = None, seed: int = 0, **runtime):
        """A DinoVisionTransformer with this architecture (random init); `runtime`: RUNTIME_KEYS."""
        from dinov2_jax.models.vision_transformer import DinoVisionTransformer

        bad = set(runtime) - set(RUNTIME_KEYS)
        if bad:
            raise ValueError(f"build() takes runtime options {RUNTIME_KEYS}, got {sorted(bad)}")
        return DinoVisionTransformer(**self.kwargs(), **runtime, rngs=rngs or nnx.Rngs(seed))

    def build_abstract(self, **runtime):
        """The module with shape-only parameters (`nnx.eval_shape`): nothing initialised or allocated."""
        return nnx.eval_shape(lambda: self.build(**runtime))
