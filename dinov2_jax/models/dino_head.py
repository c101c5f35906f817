"""DINO / iBOT projection head (official `DINOHead`)."""
import jax
import jax.numpy as jnp
from flax import nnx

from dinov2_jax.models.layers.init import torch_default_uniform, trunc_normal
from dinov2_jax.models.layers.linear import Linear
from dinov2_jax.models.layers.norm import l2_normalize


class DINOHead(nnx.Module):
    """[T, in_dim] -> [T, out_dim]: MLP (exact GELU) -> L2 normalise -> weight-normed linear (no bias).

    Params: `mlp.{0..nlayers-1}.{kernel, bias}` (torch `mlp.{0,2,4}`), `last_layer.weight_g [K]`
    (torch `[K, 1]`), `last_layer.weight_v [bottleneck, K]` (torch `[K, bottleneck]` transposed).
    Effective last weight column k: `g_k * v[:, k] / ||v[:, k]||`. `weight_g` is trainable (as official).
    """

    def __init__(self, in_dim: int, out_dim: int, nlayers: int = 3, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256, mlp_bias: bool = True, dtype=jnp.float32, *, rngs: nnx.Rngs,
                 use_bn: bool = False):
        if use_bn:
            raise NotImplementedError("use_bn=True (never used by DINOv2 configs) is not supported.")
        if nlayers < 1:
            raise ValueError(f"nlayers must be >= 1, got {nlayers}.")
        self.arch = dict(in_dim=in_dim, out_dim=out_dim, nlayers=nlayers, hidden_dim=hidden_dim,
                         bottleneck_dim=bottleneck_dim, mlp_bias=mlp_bias)
        dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
        self.mlp = nnx.List([Linear(dims[i], dims[i + 1], use_bias=mlp_bias, dtype=dtype,
                                    kernel_init=trunc_normal(0.02), rngs=rngs) for i in range(nlayers)])
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, dtype=dtype, rngs=rngs)
        self.dtype = dtype

    def __call__(self, x: jax.Array, eps: float = 1e-12) -> jax.Array:
        """`eps` of the L2 normalisation: 1e-12 (official fp32), official fp16 uses 1e-6."""
        for i, layer in enumerate(self.mlp):
            x = layer(x)
            if i < len(self.mlp) - 1:
                x = jax.nn.gelu(x, approximate=False)
        return self.last_layer(l2_normalize(x, eps))


class WeightNormLinear(nnx.Module):
    """torch `weight_norm(Linear(in, out, bias=False))` (dim=0): W = g * v / ||v|| per output unit."""

    def __init__(self, in_features: int, out_features: int, dtype=jnp.float32, *, rngs: nnx.Rngs):
        # Official: the last layer keeps torch's default Linear init (created after _init_weights), g = 1.
        self.weight_v = nnx.Param(torch_default_uniform(in_features)(rngs.params(), (in_features, out_features)))
        self.weight_g = nnx.Param(jnp.ones((out_features,), jnp.float32))
        self.dtype = dtype

    def kernel(self) -> jax.Array:
        """Effective kernel [in, out] in float32."""
        v = self.weight_v[...]
        return v * (self.weight_g[...] / jnp.sqrt(jnp.sum(v * v, axis=0)))[None, :]

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.matmul(x.astype(self.dtype), self.kernel().astype(self.dtype))
