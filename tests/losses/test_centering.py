import jax
import jax.numpy as jnp
import numpy as np

from dinov2_jax.losses import (apply_pending, dino_batch_center, ibot_batch_center, init_center_state,
                               set_pending, sinkhorn_knopp, softmax_centered)
from dinov2_jax.padding import valid_rows


def test_dino_lagged_center_sequence(golden):
    seq, temps = golden["center_seq"], golden["center_temps"]
    st = init_center_state(seq.shape[-1])
    for i in range(seq.shape[0]):
        st = apply_pending(st)
        np.testing.assert_allclose(st.center, golden["dino_centers_used"][i], rtol=1e-6, atol=1e-6)
        p = softmax_centered(jnp.asarray(seq[i]), st.center, temps[i])
        np.testing.assert_allclose(p, golden["dino_center_probs"][i], rtol=1e-6, atol=1e-6)
        st = set_pending(st, dino_batch_center(jnp.asarray(seq[i])))
    st = apply_pending(st)
    np.testing.assert_allclose(st.center, golden["dino_center_final"], rtol=1e-6, atol=1e-6)


def test_ibot_lagged_center_sequence_padded(golden):
    seq, temps, counts = golden["ibot_center_seq"], golden["center_temps"], golden["ibot_center_counts"]
    U = seq.shape[1]
    st = init_center_state(seq.shape[-1])
    for i in range(seq.shape[0]):
        st = apply_pending(st)
        np.testing.assert_allclose(st.center, golden["ibot_centers_used"][i], rtol=1e-6, atol=1e-6)
        valid = valid_rows(U, counts[i])
        p = softmax_centered(jnp.asarray(seq[i]), st.center, temps[i])
        np.testing.assert_allclose(np.asarray(p)[: counts[i]], golden["ibot_center_probs"][i][: counts[i]],
                                   rtol=1e-6, atol=1e-6)
        st = set_pending(st, ibot_batch_center(jnp.asarray(seq[i]), valid))
    st = apply_pending(st)
    np.testing.assert_allclose(st.center, golden["ibot_center_final"], rtol=1e-6, atol=1e-6)


def test_ibot_center_groups_is_mean_of_group_means():
    t = jax.random.normal(jax.random.key(0), (8, 3))
    valid = jnp.array([1, 1, 1, 1, 1, 0, 0, 0], bool)
    gid = jnp.array([0, 0, 0, 1, 1, 0, 0, 0])
    want = 0.5 * (t[:3].mean(0) + t[3:5].mean(0))
    np.testing.assert_allclose(ibot_batch_center(t, valid, gid, 2), want, rtol=1e-6)
    # a shard without masked tokens is left out (its mean is undefined)
    np.testing.assert_allclose(ibot_batch_center(t, valid, gid, 3), want, rtol=1e-6)


def test_sinkhorn_dino(golden):
    got = sinkhorn_knopp(jnp.asarray(golden["dino_sk_in"]), 0.07)
    np.testing.assert_allclose(got, golden["dino_sk_out"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got).sum(-1), 1.0, rtol=1e-6)


def test_sinkhorn_ibot_padded(golden):
    U = golden["ibot_sk_in"].shape[0]
    valid = valid_rows(U, golden["ibot_sk_n"])
    got = sinkhorn_knopp(jnp.asarray(golden["ibot_sk_in"]), 0.05, valid=valid)
    np.testing.assert_allclose(got, golden["ibot_sk_out"], rtol=1e-6, atol=1e-6)


def test_sinkhorn_uniform_logits():
    # constant logits -> uniform assignment 1/K in every row
    got = sinkhorn_knopp(jnp.zeros((6, 4)), 0.1)
    np.testing.assert_allclose(got, 0.25, rtol=1e-6)


def test_centering_uniform_gives_uniform():
    p = softmax_centered(jnp.ones((3, 5)), jnp.ones((5,)), 0.04)
    np.testing.assert_allclose(p, 0.2, rtol=1e-6)
