"""Two-layer MLP FFN with exact (erf) GELU."""
import jax
import jax.numpy as jnp
from flax import nnx

from dinov2_jax.models.layers.linear import Linear


class Mlp(nnx.Module):
    """`fc2(gelu_erf(fc1(x)))`: [..., D] -> [..., D]. Params `fc1`, `fc2` (torch names)."""

    def __init__(self, in_features: int, hidden_features: int, *, bias: bool = True,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        self.fc1 = Linear(in_features, hidden_features, use_bias=bias, dtype=dtype, rngs=rngs)
        self.fc2 = Linear(hidden_features, in_features, use_bias=bias, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        # torch nn.GELU() is the erf form; flax's default is the tanh approximation.
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))
