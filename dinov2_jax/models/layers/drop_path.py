"""Stochastic depth, as pure functions.

`drop_add_residual_subset` is what DINOv2 training uses (official `drop_add_residual_stochastic_depth`
/ its list variant, which the SSL student runs at any rate > 0): the residual branch is computed only
on a random subset of the batch, then scatter-added back scaled by B/subset. The subset size is static,
so it compiles to fixed shapes. `drop_path` is the classic per-sample Bernoulli variant.
"""
from typing import Callable

import jax
import jax.numpy as jnp


def subset_size(batch: int, rate: float) -> int:
    """Official `max(int(B * (1 - r)), 1)`."""
    return max(int(batch * (1.0 - rate)), 1)


def drop_add_residual_subset(x: jax.Array, residual_fn: Callable[[jax.Array], jax.Array], rate: float,
                             key: jax.Array) -> jax.Array:
    """`x + residual` where the residual exists only for a random subset of samples.

    x `[B, N, D]`; `residual_fn` maps `[b, N, D] -> [b, N, D]` (includes LayerScale). Samples outside the
    subset get no residual; kept ones get it scaled by `B / subset` (unbiased in expectation).
    """
    b = x.shape[0]
    keep = subset_size(b, rate)
    idx = jax.random.permutation(key, b)[:keep]
    res = residual_fn(x[idx])
    return x.at[idx].add(res.astype(x.dtype) * jnp.asarray(b / keep, x.dtype))


def drop_path(x: jax.Array, rate: float, key: jax.Array) -> jax.Array:
    """Classic DropPath on a residual branch output `x [B, ...]`: zero whole samples with prob `rate`,
    scale the kept ones by `1 / (1 - rate)`."""
    if rate <= 0.0:
        return x
    keep_prob = 1.0 - rate
    mask = jax.random.bernoulli(key, keep_prob, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / jnp.asarray(keep_prob, x.dtype), jnp.zeros((), x.dtype))
