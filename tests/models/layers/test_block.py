"""Block: pre-norm residual structure, LayerScale presence, FFN choice, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dinov2_jax.models.layers.block import Block
from dinov2_jax.models.layers.norm import layer_norm


def test_block_formula_with_layerscale():
    blk = Block(8, 2, init_values=0.3, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 5, 8))
    y = x + blk.ls1.gamma[...] * blk.attn(blk.norm1(x))
    y = y + blk.ls2.gamma[...] * blk.mlp(blk.norm2(y))
    np.testing.assert_allclose(np.asarray(blk(x)), np.asarray(y), atol=1e-6)


def test_no_layerscale_and_identity_ffn():
    blk = Block(8, 2, init_values=None, ffn_layer="identity", rngs=nnx.Rngs(0))
    assert blk.ls1 is None and blk.mlp is None
    x = jax.random.normal(jax.random.key(0), (2, 5, 8))
    y = x + blk.attn(blk.norm1(x))
    y = y + blk.norm2(y)  # official nn.Identity FFN
    np.testing.assert_allclose(np.asarray(blk(x)), np.asarray(y), atol=1e-6)
    with pytest.raises(ValueError, match="ffn_layer"):
        Block(8, 2, ffn_layer="moe", rngs=nnx.Rngs(0))


def test_layer_norm_eps_and_float32_stats():
    x = jax.random.normal(jax.random.key(0), (4, 16)) * 3 + 1
    ref = (x - x.mean(-1, keepdims=True)) / jnp.sqrt(x.var(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(np.asarray(layer_norm(x, jnp.ones(16), jnp.zeros(16), 1e-6)), np.asarray(ref),
                               atol=1e-5)
    yb = layer_norm(x.astype(jnp.bfloat16), jnp.ones(16), jnp.zeros(16), 1e-6)
    assert yb.dtype == jnp.bfloat16
