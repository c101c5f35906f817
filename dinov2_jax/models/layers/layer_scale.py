"""LayerScale: per-channel residual branch scaling."""
import jax
import jax.numpy as jnp
from flax import nnx


class LayerScale(nnx.Module):
    """`x * gamma`; `gamma [D]` initialised to the constant `init_values`."""

    def __init__(self, dim: int, init_values: float):
        self.gamma = nnx.Param(jnp.full((dim,), init_values, jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x * self.gamma[...].astype(x.dtype)
