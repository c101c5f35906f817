"""Per-parameter optimizer multipliers (official `dinov2/utils/param_groups.py`), computed from parameter paths.

The official `get_params_groups_with_decay` runs once per student submodule (backbone, dino_head,
ibot_head) and gives every parameter
  lr_multiplier = layerwise_decay ** (depth + 1 - layer_id) [* patch_embed_lr_mult for patch_embed]
      layer_id: cls/pos/mask/register tokens and patch_embed -> 0, blocks.i.* -> i + 1, rest -> depth + 1;
      heads have no blocks (depth 0, layer_id 1), so their multiplier is 1;
  wd_multiplier = 0 for names ending in `.bias` or containing `norm` or `gamma` (LayerScale), else 1;
  is_last_layer = "last_layer" in name (head weight_g / weight_v: last_layer_lr schedule).
Here the same rules run on the dotted paths of our parameter tree (`blocks.3.attn.qkv.kernel`), whose
names mirror the torch module names, so the rules carry over unchanged.
"""
import re
from typing import Any, Dict, NamedTuple

import jax

from dinov2_jax.tree_names import path_to_name

_TOKEN_NAMES = ("pos_embed", "patch_embed", "mask_token", "cls_token", "register_tokens")
_BLOCK_RE = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


class ParamMultipliers(NamedTuple):
    lr_mult: float
    wd_mult: float
    is_last_layer: bool


def layer_id(name: str, depth: int) -> int:
    """Official layer id of a backbone parameter (`depth` = number of blocks)."""
    if any(t in name for t in _TOKEN_NAMES):
        return 0
    m = _BLOCK_RE.search(name)
    if m is not None and "residual." not in name:
        return int(m.group(1)) + 1
    return depth + 1


def param_multipliers(name: str, depth: int, lr_decay_rate: float, patch_embed_lr_mult: float) -> ParamMultipliers:
    """Multipliers of one parameter. `depth` = blocks of the submodule, 0 for a head."""
    lid = layer_id(name, depth) if depth > 0 else 1  # heads: official layer_id = num_layers + 1 = 1
    lr_mult = lr_decay_rate ** (depth + 1 - lid)
    if "patch_embed" in name:
        lr_mult *= patch_embed_lr_mult
    no_wd = name.endswith(".bias") or name == "bias" or "norm" in name or "gamma" in name
    return ParamMultipliers(float(lr_mult), 0.0 if no_wd else 1.0, "last_layer" in name)


def build_param_multipliers(
    student_params: Dict[str, Any],
    depth: int,
    lr_decay_rate: float,
    patch_embed_lr_mult: float,
    backbone_key: str = "backbone",
) -> Dict[str, Any]:
    """Pytree like `student_params` ({"backbone": ..., "dino_head": ..., ...}) of `ParamMultipliers` leaves.

    Each submodule is treated as the official code does (names relative to the submodule); only the
    backbone gets layerwise decay.
    """
    if backbone_key not in student_params:
        raise KeyError(f"student params have no {backbone_key!r} entry (keys: {sorted(student_params)})")
    out = {}
    for sub, tree in student_params.items():
        d = depth if sub == backbone_key else 0
        out[sub] = jax.tree_util.tree_map_with_path(
            lambda p, _: param_multipliers(path_to_name(p), d, lr_decay_rate, patch_embed_lr_mult), tree)
    return out


def multipliers_table(mults: Dict[str, Any]) -> Dict[str, ParamMultipliers]:
    """Flat {"backbone.blocks.0.attn.qkv.kernel": ParamMultipliers} view (logging, tests)."""
    leaves = jax.tree_util.tree_flatten_with_path(mults, is_leaf=lambda x: isinstance(x, ParamMultipliers))[0]
    return {path_to_name(p): m for p, m in leaves}
