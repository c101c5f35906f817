"""SwiGLU FFN: hidden rounding and [x1 | x2] split with silu(x1) * x2."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dinov2_jax.models.layers.mlp import Mlp
from dinov2_jax.models.layers.swiglu_ffn import SwiGLUFFN, swiglu_hidden_dim


def test_hidden_rounding():
    assert swiglu_hidden_dim(6144) == 4096  # ViT-g
    assert swiglu_hidden_dim(256) == 176  # (170 + 7) // 8 * 8
    assert swiglu_hidden_dim(4 * 384) == 1024


def test_forward_formula():
    m = SwiGLUFFN(8, 32, rngs=nnx.Rngs(0))
    assert m.w12.kernel.shape == (8, 2 * 24) and m.w3.kernel.shape == (24, 8)
    x = np.asarray(jax.random.normal(jax.random.key(1), (3, 8)))
    h = x @ np.asarray(m.w12.kernel[...]) + np.asarray(m.w12.bias[...])
    x1, x2 = h[:, :24], h[:, 24:]
    ref = (x1 / (1 + np.exp(-x1)) * x2) @ np.asarray(m.w3.kernel[...]) + np.asarray(m.w3.bias[...])
    np.testing.assert_allclose(np.asarray(m(jnp.asarray(x))), ref, atol=1e-5)


def test_mlp_uses_exact_gelu():
    m = Mlp(4, 8, rngs=nnx.Rngs(0))
    x = jnp.linspace(-3, 3, 4)[None]
    h = np.asarray(x) @ np.asarray(m.fc1.kernel[...])
    from math import erf, sqrt
    g = np.vectorize(lambda v: 0.5 * v * (1 + erf(v / sqrt(2))))(h)
    np.testing.assert_allclose(np.asarray(m(x)), g @ np.asarray(m.fc2.kernel[...]), atol=1e-6)
