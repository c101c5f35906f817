"""AdamW with per-parameter multipliers and per-submodule gradient clipping
(official `build_optimizer` and the clipping loop in `dinov2/train/train.py`).

Matches `torch.optim.AdamW` on the official param groups: each parameter uses
    lr = (last_layer_lr if is_last_layer else lr) * lr_mult,   wd = wd * wd_mult
with lr, wd, last_layer_lr read from the per-step `hparams` (traced scalars, so no recompile), and
    p <- p - lr * wd * p - lr * m_hat / (sqrt(v_hat) + eps)        (decoupled decay on the old p)
The Adam moments come from `optax.scale_by_adam` (b1, b2 from the config, eps 1e-8 = torch default).
Clipping follows torch/FSDP `clip_grad_norm_` per student submodule (backbone, dino_head, ibot_head):
g <- g * min(1, max_norm / (||g|| + 1e-6)); DINO v1 (`utils.clip_gradients`) clips every parameter
array on its own norm instead (`clip_per_parameter`).
"""
from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import optax

from dinov2_jax.train.param_groups import ParamMultipliers

ADAM_EPS = 1e-8
CLIP_EPS = 1e-6  # torch clip_grad_norm_


def make_adam(b1: float, b2: float) -> optax.GradientTransformation:
    """Adam moment estimator (no lr, no decay: those are applied per parameter in `apply_updates`)."""
    return optax.scale_by_adam(b1=b1, b2=b2, eps=ADAM_EPS)


def global_norm(tree) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def clip_by_submodule(grads: Dict[str, Any], max_norm: float) -> Tuple[Dict[str, Any], Dict[str, jax.Array]]:
    """Clip each top-level entry (submodule) of `grads` to global norm `max_norm` separately.

    Returns the clipped grads and the pre-clip norms {submodule: norm}. `max_norm <= 0` disables
    clipping (official `if clip_grad:`), norms are still reported.
    """
    out, norms = {}, {}
    for name, g in grads.items():
        n = global_norm(g)
        norms[name] = n
        if max_norm > 0:
            coef = jnp.minimum(max_norm / (n + CLIP_EPS), 1.0)
            g = jax.tree.map(lambda x: (x * coef).astype(x.dtype), g)
        out[name] = g
    return out, norms


def clip_per_parameter(grads: Dict[str, Any], max_norm: float) -> Tuple[Dict[str, Any], Dict[str, jax.Array]]:
    """DINO v1 `utils.clip_gradients`: each parameter array g <- g * min(1, max_norm / (||g|| + 1e-6)).

    Returns the clipped grads and, for logging, the pre-clip global norm of each submodule.
    `max_norm <= 0` disables clipping.
    """
    norms = {name: global_norm(g) for name, g in grads.items()}
    if max_norm <= 0:
        return grads, norms

    def one(x):
        coef = jnp.minimum(max_norm / (jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)))) + CLIP_EPS), 1.0)
        return (x * coef).astype(x.dtype)

    return jax.tree.map(one, grads), norms


def apply_updates(params, grads, adam_state, adam: optax.GradientTransformation, multipliers, hparams):
    """One AdamW step. `multipliers`: pytree like `params` of `ParamMultipliers` (static floats).

    hparams: {"lr", "wd", "last_layer_lr"} float32 scalars. Returns (new_params, new_adam_state).
    """
    updates, adam_state = adam.update(grads, adam_state, params)
    lr, wd, last_lr = hparams["lr"], hparams["wd"], hparams["last_layer_lr"]

    def one(p, u, m: ParamMultipliers):
        p_lr = (last_lr if m.is_last_layer else lr) * m.lr_mult
        p_wd = wd * m.wd_mult
        return (p - p_lr * p_wd * p - p_lr * u).astype(p.dtype)

    new_params = jax.tree.map(one, params, updates, multipliers,
                              is_leaf=lambda x: isinstance(x, ParamMultipliers))
    return new_params, adam_state
