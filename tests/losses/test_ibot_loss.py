import jax.numpy as jnp
import numpy as np
import pytest

from dinov2_jax.losses import ibot_masked_loss


def test_matches_official_padded_buffer(golden):
    n_img = golden["ibot_masks"].shape[0]
    got = ibot_masked_loss(jnp.asarray(golden["ibot_student"]), jnp.asarray(golden["ibot_teacher_probs"]),
                           jnp.asarray(golden["ibot_weights"]), jnp.asarray(golden["ibot_n_masked"]), n_img)
    np.testing.assert_allclose(got, golden["ibot_loss"], rtol=1e-5, atol=1e-6)


def test_padding_is_ignored_even_if_nonfinite(golden):
    s = golden["ibot_student"].copy()
    t = golden["ibot_teacher_probs"].copy()
    n = int(golden["ibot_n_masked"])
    s[n:] = np.inf
    t[n:] = np.nan
    w = golden["ibot_weights"].copy()
    w[n:] = 123.0
    got = ibot_masked_loss(jnp.asarray(s), jnp.asarray(t), jnp.asarray(w), n, golden["ibot_masks"].shape[0])
    np.testing.assert_allclose(got, golden["ibot_loss"], rtol=1e-5, atol=1e-6)


def test_uniform_student_gives_weighted_log_k():
    # every image i with n_i masked tokens contributes sum_p (1/n_i) log K = log K; divide by 2B.
    U, K, n_img = 10, 7, 4
    counts = [2, 0, 3, 1]  # 6 valid rows, 3 masked images
    w = np.zeros(U, np.float32)
    w[:6] = np.concatenate([np.full(c, 1.0 / c) for c in counts if c])
    t = np.full((U, K), 1.0 / K, np.float32)
    got = ibot_masked_loss(jnp.zeros((U, K)), jnp.asarray(t), jnp.asarray(w), 6, n_img)
    np.testing.assert_allclose(got, 3 * np.log(K) / n_img, rtol=1e-6)


def test_bad_shapes():
    with pytest.raises(ValueError, match="masks_weight"):
        ibot_masked_loss(jnp.zeros((4, 3)), jnp.zeros((4, 3)), jnp.zeros((5,)), 2, 2)
