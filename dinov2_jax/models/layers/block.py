"""Pre-norm transformer block (official `Block` / `NestedTensorBlock`)."""
import jax
import jax.numpy as jnp
from flax import nnx

from dinov2_jax.models.layers.attention import Attention
from dinov2_jax.models.layers.drop_path import drop_add_residual_subset
from dinov2_jax.models.layers.layer_scale import LayerScale
from dinov2_jax.models.layers.mlp import Mlp
from dinov2_jax.models.layers.norm import LayerNorm
from dinov2_jax.models.layers.swiglu_ffn import SwiGLUFFN

FFN_LAYERS = ("mlp", "swiglu", "swiglufused", "identity")


class Block(nnx.Module):
    """`x + ls1(attn(norm1(x)))`, then `x + ls2(mlp(norm2(x)))`: [B, N, D] -> [B, N, D].

    `init_values` None or 0 -> no LayerScale (params `ls1`/`ls2` absent, as the official Identity).
    `drop_path_rate` > 0 and a `key` -> batch-subset stochastic depth, separately for both residuals.
    """

    def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 proj_bias: bool = True, ffn_bias: bool = True, init_values=None, ffn_layer: str = "mlp",
                 drop_path_rate: float = 0.0, attn_impl: str = "xla", dtype=jnp.float32, rngs: nnx.Rngs):
        self.norm1 = LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias, attn_impl=attn_impl,
                              dtype=dtype, rngs=rngs)
        self.ls1 = LayerScale(dim, init_values) if init_values else None
        self.norm2 = LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        if ffn_layer == "mlp":
            self.mlp = Mlp(dim, hidden, bias=ffn_bias, dtype=dtype, rngs=rngs)
        elif ffn_layer in ("swiglu", "swiglufused"):
            self.mlp = SwiGLUFFN(dim, hidden, bias=ffn_bias, dtype=dtype, rngs=rngs)
        elif ffn_layer == "identity":
            self.mlp = None  # official nn.Identity FFN: the branch is ls2(norm2(x))
        else:
            raise ValueError(f"Unknown ffn_layer {ffn_layer!r}; choose one of {FFN_LAYERS}.")
        self.ls2 = LayerScale(dim, init_values) if init_values else None
        self.drop_path_rate = float(drop_path_rate)

    def _attn_residual(self, x):
        y = self.attn(self.norm1(x))
        return self.ls1(y) if self.ls1 is not None else y

    def _ffn_residual(self, x):
        y = self.norm2(x)
        if self.mlp is not None:
            y = self.mlp(y)
        return self.ls2(y) if self.ls2 is not None else y

    def __call__(self, x: jax.Array, key: jax.Array | None = None, batch_groups: int = 1) -> jax.Array:
        """`batch_groups`: stochastic-depth subsets are drawn within each of that many row groups."""
        if key is not None and self.drop_path_rate > 0.0:
            k1, k2 = jax.random.split(key)
            x = drop_add_residual_subset(x, self._attn_residual, self.drop_path_rate, k1, batch_groups)
            x = drop_add_residual_subset(x, self._ffn_residual, self.drop_path_rate, k2, batch_groups)
            return x
        x = x + self._attn_residual(x).astype(x.dtype)
        x = x + self._ffn_residual(x).astype(x.dtype)
        return x
