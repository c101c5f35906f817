"""LayerNorm and L2 normalisation (torch `F.normalize` semantics)."""
import jax
import jax.numpy as jnp
import numpy as np

from dinov2_jax.models.layers.norm import l2_normalize, layer_norm


def test_l2_normalize_matches_torch_definition():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-13, 0.0]], np.float32)
    y = np.asarray(l2_normalize(x))
    np.testing.assert_allclose(y[0], [0.6, 0.8], atol=1e-7)
    np.testing.assert_array_equal(y[1], [0.0, 0.0])  # zero vector stays zero (eps guards the division)
    np.testing.assert_allclose(y[2], [1e-13 / 1e-12, 0.0], rtol=1e-6)
    # a larger eps (KoLeo's 1e-8) caps the scale-up of tiny rows
    np.testing.assert_allclose(np.asarray(l2_normalize(x, 1e-8))[2], [1e-5, 0.0], rtol=1e-6)


def test_l2_normalize_keeps_dtype_and_computes_in_float32():
    x = jnp.array([[3.0, 4.0]], jnp.bfloat16)
    y = l2_normalize(x)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y, np.float32), [[0.6, 0.8]], atol=1e-2)


def test_l2_normalize_zero_row_has_finite_gradient():
    """An all-zero row (padded buffer) must not produce NaN gradients (torch's F.normalize does not)."""
    x = jnp.zeros((2, 5)).at[1].set(jnp.arange(1.0, 6.0))
    g = jax.grad(lambda v: jnp.sum(l2_normalize(v) * jnp.arange(5.0)))(x)
    assert bool(jnp.all(jnp.isfinite(g)))
    expected_row1 = jax.grad(lambda v: jnp.sum(v / jnp.linalg.norm(v) * jnp.arange(5.0)))(x[1])
    assert jnp.allclose(g[1], expected_row1, atol=1e-7)


def test_layer_norm_matches_biased_variance_formula():
    x = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    scale, bias = np.full(8, 2.0, np.float32), np.full(8, 0.5, np.float32)
    y = np.asarray(layer_norm(jnp.asarray(x), jnp.asarray(scale), jnp.asarray(bias), 1e-6))
    ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6) * 2.0 + 0.5
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
