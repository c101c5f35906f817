"""Key layouts of DINOv2 backbone state dicts, all translated to and from the official one.

The official layout (`dinov2/models/vision_transformer.py` module names: `cls_token`, `pos_embed`,
`blocks.{i}.attn.qkv.weight`, ...) is the hub between formats; `dinov2_jax.convert` maps it onto the
JAX parameters. This module translates:

- Hugging Face `Dinov2Model` / `Dinov2WithRegistersModel` (`embeddings.*`, `encoder.layer.{i}.*`,
  `layernorm.*`; separate query/key/value projections; `mlp.weights_in/weights_out` for SwiGLU; the
  newer in-memory names q_proj/k_proj/v_proj/o_proj/gate_proj/up_proj/down_proj are read too) and its
  `config.json`;
- timm `vit_*_dinov2` state dicts (no `mask_token`; SwiGLU as `mlp.fc1/fc2`; register models store
  `reg_token` and fold the cls position embedding into `cls_token`, see timm's `_convert_dinov2`).

Every translation is strict: a key that is not consumed is reported, never dropped.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from dinov2_jax.models.config import ViTConfig
from dinov2_jax.weights.matching import mismatch_message


class LayoutError(ValueError):
    """A state dict does not have the expected layout; the message lists the offending keys."""


def _fail(kind: str, unexpected=(), missing=(), extra: str = ""):
    raise LayoutError(mismatch_message(f"{kind} state dict", missing=missing, unexpected=unexpected, hint=extra))


# ---------------------------------------------------------------------------------------------------
# Hugging Face transformers
HF_MODEL_TYPES = {"dinov2": "Dinov2Model", "dinov2_with_registers": "Dinov2WithRegistersModel"}


def is_hf_state_dict(sd: Mapping[str, Any]) -> bool:
    return any(k.startswith(("embeddings.", "dinov2.embeddings.")) for k in sd)


def hf_config_to_vit(cfg: Mapping[str, Any], interpolation: str = "transformers") -> ViTConfig:
    """`config.json` of a Dinov2Model / Dinov2WithRegistersModel -> ViTConfig (with the chosen interpolation)."""
    model_type = cfg.get("model_type")
    if model_type not in HF_MODEL_TYPES:
        raise LayoutError(f"config.json has model_type {model_type!r}; only {sorted(HF_MODEL_TYPES)} are DINOv2 "
                          "backbones")
    act = cfg.get("hidden_act", "gelu")
    if act != "gelu":
        raise LayoutError(f"config.json hidden_act={act!r}: the DINOv2 backbone uses exact GELU ('gelu')")
    eps = float(cfg.get("layer_norm_eps", 1e-6))
    if eps != 1e-6:
        raise LayoutError(f"config.json layer_norm_eps={eps}: the DINOv2 backbone uses 1e-6")
    patch = cfg.get("patch_size", 14)
    if isinstance(patch, (list, tuple)):
        if patch[0] != patch[1]:
            raise LayoutError(f"non-square patch size {patch} is not supported")
        patch = patch[0]
    image = cfg.get("image_size", 518)
    if isinstance(image, (list, tuple)):
        if image[0] != image[1]:
            raise LayoutError(f"non-square image_size {image} is not supported")
        image = image[0]
    vit = ViTConfig(
        img_size=int(image), patch_size=int(patch), in_chans=int(cfg.get("num_channels", 3)),
        embed_dim=int(cfg["hidden_size"]), depth=int(cfg["num_hidden_layers"]),
        num_heads=int(cfg["num_attention_heads"]), mlp_ratio=float(cfg.get("mlp_ratio", 4)),
        qkv_bias=bool(cfg.get("qkv_bias", True)), ffn_bias=True, proj_bias=True,
        init_values=float(cfg.get("layerscale_value", 1.0)),
        ffn_layer="swiglufused" if cfg.get("use_swiglu_ffn", False) else "mlp",
        num_register_tokens=int(cfg.get("num_register_tokens", 0)) if model_type == "dinov2_with_registers" else 0)
    return vit.with_interpolation(interpolation)


_HF_BLOCK = {  # HF block-relative name -> official block-relative name (1:1 renames)
    "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight", "norm2.bias": "norm2.bias",
    "attention.output.dense.weight": "attn.proj.weight", "attention.output.dense.bias": "attn.proj.bias",
    "attention.o_proj.weight": "attn.proj.weight", "attention.o_proj.bias": "attn.proj.bias",
    "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1.weight": "mlp.fc1.weight", "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight", "mlp.fc2.bias": "mlp.fc2.bias",
    "mlp.weights_in.weight": "mlp.w12.weight", "mlp.weights_in.bias": "mlp.w12.bias",
    "mlp.weights_out.weight": "mlp.w3.weight", "mlp.weights_out.bias": "mlp.w3.bias",
    "mlp.down_proj.weight": "mlp.w3.weight", "mlp.down_proj.bias": "mlp.w3.bias",
}
_HF_TOP = {
    "embeddings.cls_token": "cls_token", "embeddings.mask_token": "mask_token",
    "embeddings.position_embeddings": "pos_embed", "embeddings.register_tokens": "register_tokens",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias",
}
# concatenations: official name <- HF parts in order (query/key/value; SwiGLU gate/up = [x1 | x2])
_HF_CONCAT = {
    "attn.qkv": (("attention.attention.query", "attention.attention.key", "attention.attention.value"),
                 ("attention.q_proj", "attention.k_proj", "attention.v_proj")),
    "mlp.w12": (("mlp.gate_proj", "mlp.up_proj"),),
}


def hf_to_official(sd: Mapping[str, Any]) -> dict:
    """HF Dinov2Model state dict (numpy) -> official-layout backbone state dict. Strict."""
    sd = {k[len("dinov2."):] if k.startswith("dinov2.") else k: v for k, v in sd.items()}
    out, used = {}, set()
    for k, v in sd.items():
        if k in _HF_TOP:
            out[_HF_TOP[k]] = v
            used.add(k)
            continue
        m = re.match(r"^encoder\.layer\.(\d+)\.(.+)$", k)
        if m and m.group(2) in _HF_BLOCK:
            out[f"blocks.{m.group(1)}.{_HF_BLOCK[m.group(2)]}"] = v
            used.add(k)
    blocks = sorted({int(m.group(1)) for k in sd if (m := re.match(r"^encoder\.layer\.(\d+)\.", k))})
    for i in blocks:
        for official, spellings in _HF_CONCAT.items():
            for parts in spellings:
                for leaf in ("weight", "bias"):
                    keys = [f"encoder.layer.{i}.{p}.{leaf}" for p in parts]
                    present = [key in sd for key in keys]
                    if all(present):
                        out[f"blocks.{i}.{official}.{leaf}"] = np.concatenate([np.asarray(sd[key]) for key in keys], 0)
                        used.update(keys)
                    elif any(present):
                        _fail("Hugging Face DINOv2", missing=[key for key, p in zip(keys, present) if not p])
    unexpected = set(sd) - used
    if unexpected:
        hint = ("the classifier of a Dinov2ForImageClassification checkpoint is not part of the backbone; "
                "save the backbone alone (model.dinov2.save_pretrained)") if any(
                    k.startswith("classifier.") for k in unexpected) else ""
        _fail("Hugging Face DINOv2", unexpected=unexpected, extra=hint)
    return out


def official_to_hf(sd: Mapping[str, np.ndarray], cfg: ViTConfig) -> tuple[dict, dict]:
    """Official-layout backbone state dict -> (HF state dict in the on-disk names, config.json dict).

    transformers always has LayerScale and projection / FFN biases: a model without them is written with
    gammas of 1 and zero biases (the same function). The "identity" FFN has no transformers counterpart.
    """
    if cfg.ffn_layer not in ("mlp", "swiglu", "swiglufused"):
        raise LayoutError(f"ffn_layer={cfg.ffn_layer!r} has no transformers equivalent")
    if float(cfg.mlp_ratio) != int(cfg.mlp_ratio):
        raise LayoutError(f"mlp_ratio={cfg.mlp_ratio}: transformers' DINOv2 config takes an integer mlp_ratio")
    rev_top = {v: k for k, v in _HF_TOP.items()}
    rev_block = {}
    for hf, off in _HF_BLOCK.items():
        if "o_proj" in hf or "down_proj" in hf:
            continue  # write the on-disk (hub) names
        rev_block[off] = hf
    d = cfg.embed_dim
    out = {}
    for k, v in sd.items():
        v = np.asarray(v, np.float32)
        if k in rev_top:
            out[rev_top[k]] = v
            continue
        m = re.match(r"^blocks\.(\d+)\.(.+)$", k)
        if not m:
            raise LayoutError(f"official key {k!r} has no transformers equivalent")
        i, rest = m.group(1), m.group(2)
        pre = f"encoder.layer.{i}."
        if rest.startswith("attn.qkv."):
            leaf = rest.split(".")[-1]
            for name, part in zip(("query", "key", "value"), np.split(v, 3, axis=0)):
                out[f"{pre}attention.attention.{name}.{leaf}"] = np.ascontiguousarray(part)
        elif rest in rev_block:
            out[pre + rev_block[rest]] = v
        else:
            raise LayoutError(f"official key {k!r} has no transformers equivalent")
    for i in range(cfg.depth):
        pre = f"encoder.layer.{i}."
        for n in ("1", "2"):  # transformers always applies LayerScale
            out.setdefault(f"{pre}layer_scale{n}.lambda1", np.ones((d,), np.float32))
        out.setdefault(f"{pre}attention.output.dense.bias", np.zeros((d,), np.float32))
        if cfg.ffn_layer == "mlp":
            hidden = out[f"{pre}mlp.fc1.weight"].shape[0]
            out.setdefault(f"{pre}mlp.fc1.bias", np.zeros((hidden,), np.float32))
            out.setdefault(f"{pre}mlp.fc2.bias", np.zeros((d,), np.float32))
        else:
            hidden2 = out[f"{pre}mlp.weights_in.weight"].shape[0]
            out.setdefault(f"{pre}mlp.weights_in.bias", np.zeros((hidden2,), np.float32))
            out.setdefault(f"{pre}mlp.weights_out.bias", np.zeros((d,), np.float32))
    reg = cfg.num_register_tokens > 0
    model_type = "dinov2_with_registers" if reg else "dinov2"
    config = {
        "architectures": [HF_MODEL_TYPES[model_type]], "model_type": model_type,
        "hidden_size": d, "num_hidden_layers": cfg.depth, "num_attention_heads": cfg.num_heads,
        "mlp_ratio": int(cfg.mlp_ratio), "image_size": cfg.img_size, "patch_size": cfg.patch_size,
        "num_channels": cfg.in_chans, "qkv_bias": cfg.qkv_bias, "hidden_act": "gelu", "layer_norm_eps": 1e-6,
        "layerscale_value": float(cfg.init_values) if cfg.init_values else 1.0,
        "use_swiglu_ffn": cfg.ffn_layer != "mlp", "drop_path_rate": 0.0, "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02, "apply_layernorm": True,
        "reshape_hidden_states": True, "torch_dtype": "float32",
    }
    if reg:
        config["num_register_tokens"] = cfg.num_register_tokens
    else:
        config["use_mask_token"] = True
    return out, config


# ---------------------------------------------------------------------------------------------------
# timm
def is_timm_state_dict(sd: Mapping[str, Any]) -> bool:
    """timm dinov2 checkpoints lack `mask_token` (timm drops it) and may hold `reg_token`."""
    return "cls_token" in sd and "mask_token" not in sd and any(k.startswith("blocks.") for k in sd)


def timm_to_official(sd: Mapping[str, Any]) -> dict:
    """timm `vit_*_dinov2` state dict -> official layout (inverse of timm's `_convert_dinov2`).

    `mask_token` is not in timm files (it only replaces masked patches in training): it is set to zeros,
    its official initial value. Register models: timm keeps `cls_token + pos_embed[:, 0]` as its cls token
    and no cls slot in `pos_embed`; the official layout gets that sum as `cls_token` and a zero cls slot,
    which gives the same tokens at every image size (the cls slot is never resampled).
    """
    out = {}
    for k, v in sd.items():
        m = re.match(r"^blocks\.(\d+)\.mlp\.fc([12])\.(weight|bias)$", k)
        if m and sd.get(f"blocks.{m.group(1)}.mlp.fc1.weight") is not None and _is_swiglu_timm(sd, m.group(1)):
            k = f"blocks.{m.group(1)}.mlp.{'w12' if m.group(2) == '1' else 'w3'}.{m.group(3)}"
        out[k] = v
    if "reg_token" in out:
        reg = out.pop("reg_token")
        pos = np.asarray(out["pos_embed"])
        cls = np.asarray(out["cls_token"])
        out["register_tokens"] = reg
        out["pos_embed"] = np.concatenate([np.zeros_like(pos[:, :1]), pos], axis=1)
        out["cls_token"] = cls
    dim = np.shape(out["cls_token"])[-1]
    out["mask_token"] = np.zeros((1, dim), np.asarray(out["cls_token"]).dtype)
    return out


def _is_swiglu_timm(sd, i) -> bool:
    """timm's packed SwiGLU: fc1 is [2h, D] and fc2 is [D, h] (an MLP has fc2 [D, fc1 rows])."""
    fc1, fc2 = sd.get(f"blocks.{i}.mlp.fc1.weight"), sd.get(f"blocks.{i}.mlp.fc2.weight")
    return fc1 is not None and fc2 is not None and np.shape(fc1)[0] == 2 * np.shape(fc2)[1]
