"""Dense layer: float32 parameters, matmul in the compute dtype."""
import jax
import jax.numpy as jnp
from flax import nnx

from dinov2_jax.models.layers.init import trunc_normal


class Linear(nnx.Module):
    """`y = x @ kernel + bias`; kernel `[in, out]` (torch weight transposed), bias `[out]`.

    Default init is the official ViT one (trunc_normal std 0.02 weights, zero bias).
    """

    def __init__(self, in_features: int, out_features: int, *, use_bias: bool = True,
                 dtype=jnp.float32, kernel_init=None, bias_init=None, rngs: nnx.Rngs):
        kernel_init = kernel_init or trunc_normal(0.02)
        self.kernel = nnx.Param(kernel_init(rngs.params(), (in_features, out_features), jnp.float32))
        if use_bias:
            init_b = bias_init or (lambda k, s, d: jnp.zeros(s, d))
            self.bias = nnx.Param(init_b(rngs.params(), (out_features,), jnp.float32))
        else:
            self.bias = None
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        """[..., in] -> [..., out] in `self.dtype`."""
        y = jnp.matmul(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y
