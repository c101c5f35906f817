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
                             key: jax.Array, groups: int = 1) -> jax.Array:
    """`x + residual` where the residual exists only for a random subset of samples.

    x `[B, N, D]`; `residual_fn` maps `[b, N, D] -> [b, N, D]` (includes LayerScale). Samples outside the
    subset get no residual; kept ones get it scaled by `B_g / subset` (unbiased in expectation).
    `groups`: the batch is `groups` independent per-device batches of `B_g = B / groups` contiguous rows
    (group-major, as the train step lays them out). Each group keeps `max(int(B_g * (1 - rate)), 1)` of
    its own rows, as the official code does per GPU. On a mesh whose batch shards hold whole groups the
    gather and scatter stay on the device; a subset drawn over the whole batch would make every device
    compute the branch for rows of all the others.
    """
    b = x.shape[0]
    if groups < 1 or b % groups:
        raise ValueError(f"stochastic depth: batch {b} does not split into {groups} equal groups")
    bg = b // groups
    keep = subset_size(bg, rate)
    scale = jnp.asarray(bg / keep, x.dtype)
    if groups == 1:
        idx = jax.random.permutation(key, b)[:keep]
        res = residual_fn(x[idx])
        return x.at[idx].add(res.astype(x.dtype) * scale)
    idx = jax.vmap(lambda k: jax.random.permutation(k, bg)[:keep])(jax.random.split(key, groups))  # [G, keep]
    xg = x.reshape((groups, bg) + x.shape[1:])
    sub = jax.vmap(lambda rows, i: rows[i])(xg, idx)  # [G, keep, N, D]
    res = residual_fn(sub.reshape((groups * keep,) + x.shape[1:])).astype(x.dtype)
    res = res.reshape(sub.shape) * scale
    return jax.vmap(lambda rows, i, r: rows.at[i].add(r))(xg, idx, res).reshape(x.shape)


def drop_path(x: jax.Array, rate: float, key: jax.Array) -> jax.Array:
    """Classic DropPath on a residual branch output `x [B, ...]`: zero whole samples with prob `rate`,
    scale the kept ones by `1 / (1 - rate)`."""
    if rate <= 0.0:
        return x
    keep_prob = 1.0 - rate
    mask = jax.random.bernoulli(key, keep_prob, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / jnp.asarray(keep_prob, x.dtype), jnp.zeros((), x.dtype))
