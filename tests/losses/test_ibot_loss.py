import jax.numpy as jnp
import numpy as np
import pytest

from dinov2_jax.losses import ibot_masked_loss
from dinov2_jax.padding import valid_rows


def test_matches_official_padded_buffer(golden):
    n_img = golden["ibot_masks"].shape[0]
    valid = valid_rows(golden["ibot_weights"].shape[0], jnp.asarray(golden["ibot_n_masked"]))
    got = ibot_masked_loss(jnp.asarray(golden["ibot_student"]), jnp.asarray(golden["ibot_teacher_probs"]),
                           jnp.asarray(golden["ibot_weights"]), valid, n_img)
    np.testing.assert_allclose(got, golden["ibot_loss"], rtol=1e-5, atol=1e-6)


def test_padding_is_ignored_even_if_nonfinite(golden):
    s = golden["ibot_student"].copy()
    t = golden["ibot_teacher_probs"].copy()
    n = int(golden["ibot_n_masked"])
    s[n:] = np.inf
    t[n:] = np.nan
    w = golden["ibot_weights"].copy()
    w[n:] = 123.0
    got = ibot_masked_loss(jnp.asarray(s), jnp.asarray(t), jnp.asarray(w), valid_rows(len(w), n),
                           golden["ibot_masks"].shape[0])
    np.testing.assert_allclose(got, golden["ibot_loss"], rtol=1e-5, atol=1e-6)


def test_uniform_student_gives_weighted_log_k():
    # every image i with n_i masked tokens contributes sum_p (1/n_i) log K = log K; divide by 2B.
    U, K, n_img = 10, 7, 4
    counts = [2, 0, 3, 1]  # 6 valid rows, 3 masked images
    w = np.zeros(U, np.float32)
    w[:6] = np.concatenate([np.full(c, 1.0 / c) for c in counts if c])
    t = np.full((U, K), 1.0 / K, np.float32)
    got = ibot_masked_loss(jnp.zeros((U, K)), jnp.asarray(t), jnp.asarray(w), valid_rows(U, 6), n_img)
    np.testing.assert_allclose(got, 3 * np.log(K) / n_img, rtol=1e-6)


def test_bad_shapes():
    with pytest.raises(ValueError, match="masks_weight"):
        ibot_masked_loss(jnp.zeros((4, 3)), jnp.zeros((4, 3)), jnp.zeros((5,)), valid_rows(5, 2), 2)
    with pytest.raises(ValueError, match="valid"):
        ibot_masked_loss(jnp.zeros((4, 3)), jnp.zeros((4, 3)), jnp.zeros((4,)), valid_rows(5, 2), 2)


def test_scattered_valid_rows_equal_one_prefix_buffer():
    """Two per-device buffers (valid prefixes of 3 and 2 rows) give the loss of one buffer of the 5 rows."""
    rng = np.random.default_rng(0)
    s, t = rng.standard_normal((8, 5)).astype(np.float32), rng.dirichlet(np.ones(5), 8).astype(np.float32)
    w = rng.uniform(0.1, 1, 8).astype(np.float32)
    valid = np.array([1, 1, 1, 0, 1, 1, 0, 0], bool)
    got = ibot_masked_loss(jnp.asarray(s), jnp.asarray(t), jnp.asarray(w), jnp.asarray(valid), 6)
    ref = ibot_masked_loss(jnp.asarray(s[valid]), jnp.asarray(t[valid]), jnp.asarray(w[valid]), valid_rows(5, 5), 6)
    np.testing.assert_allclose(got, ref, rtol=1e-6)
