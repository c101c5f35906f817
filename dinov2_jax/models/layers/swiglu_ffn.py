"""SwiGLU FFN as the official `SwiGLUFFNFused` (ViT-g)."""
import jax
import jax.numpy as jnp
from flax import nnx

from dinov2_jax.models.layers.linear import Linear


def swiglu_hidden_dim(hidden_features: int) -> int:
    """Official rounding: `(int(h * 2/3) + 7) // 8 * 8` (6144 -> 4096 for ViT-g)."""
    return (int(hidden_features * 2 / 3) + 7) // 8 * 8


class SwiGLUFFN(nnx.Module):
    """`w3(silu(x1) * x2)` with `[x1 | x2] = w12(x)`: [..., D] -> [..., D].

    `hidden_features` is the pre-rounding width `int(D * mlp_ratio)`; w12 kernel `[D, 2h]`
    (columns = torch rows [x1 | x2]), w3 kernel `[h, D]`.
    """

    def __init__(self, in_features: int, hidden_features: int, *, bias: bool = True,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        hidden = swiglu_hidden_dim(hidden_features)
        self.hidden_features = hidden
        self.w12 = Linear(in_features, 2 * hidden, use_bias=bias, dtype=dtype, rngs=rngs)
        self.w3 = Linear(hidden, in_features, use_bias=bias, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x12 = self.w12(x)
        x1, x2 = jnp.split(x12, 2, axis=-1)
        return self.w3(jax.nn.silu(x1) * x2)
