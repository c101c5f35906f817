"""Normalisations with float32 statistics whatever the compute dtype: LayerNorm and L2 normalisation."""
import jax
import jax.numpy as jnp
from flax import nnx


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    """Normalise the last axis of `x` [..., D]; statistics in float32, output in x.dtype."""
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)  # biased, as torch
    y = (xf - mean) * jax.lax.rsqrt(var + eps) * scale.astype(jnp.float32) + bias.astype(jnp.float32)
    return y.astype(x.dtype)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """torch `F.normalize(x, p=2, dim=-1, eps)`: `x [..., D] / max(||x||_2, eps)` along the last axis.

    float32 math, output in x.dtype. An all-zero row stays zero and has a finite (zero-norm) gradient.
    """
    x = jnp.asarray(x)
    xf = x.astype(jnp.float32)
    sq = jnp.sum(xf * xf, axis=-1, keepdims=True)
    # sqrt has an infinite derivative at 0 (NaN gradients for an all-zero row, e.g. a padded buffer
    # row); torch's norm backward is 0 there, so take the sqrt of a safe value and zero it back.
    n = jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)
    return (xf / jnp.maximum(n, eps)).astype(x.dtype)


class LayerNorm(nnx.Module):
    """Params `scale [D]` (torch `weight`) = 1, `bias [D]` = 0. The backbone uses eps 1e-6."""

    def __init__(self, dim: int, *, eps: float = 1e-6):
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        return layer_norm(x, self.scale[...], self.bias[...], self.eps)
