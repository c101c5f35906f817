import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinov2_jax.losses import dino_loss


def test_matches_official(golden):
    got = dino_loss(jnp.asarray(golden["dino_student"]), jnp.asarray(golden["dino_teacher_probs"]))
    np.testing.assert_allclose(got, golden["dino_loss"], rtol=1e-5, atol=1e-5)


def test_uniform_logits_give_log_k():
    # uniform student and any teacher distribution: each pair costs log K; sum over S*T pairs.
    S, T, B, K = 3, 2, 4, 11
    t = jax.nn.softmax(jax.random.normal(jax.random.key(0), (T, B, K)), -1)
    got = dino_loss(jnp.zeros((S, B, K)), t)
    np.testing.assert_allclose(got, S * T * np.log(K), rtol=1e-6)


def test_hand_formula():
    rng = np.random.default_rng(1)
    s = rng.normal(size=(2, 3, 5)).astype(np.float32)
    t = rng.dirichlet(np.ones(5), size=(2, 3)).astype(np.float32)
    z = s / 0.1
    lsm = z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(-1, keepdims=True)
    want = -sum((t[j] * lsm[i]).sum(-1).mean() for i in range(2) for j in range(2))
    np.testing.assert_allclose(dino_loss(jnp.asarray(s), jnp.asarray(t)), want, rtol=1e-5)


def test_bad_shapes():
    with pytest.raises(ValueError, match=r"\[S,B,K\]"):
        dino_loss(jnp.zeros((3, 4)), jnp.zeros((1, 3, 4)))
    with pytest.raises(ValueError, match="differ"):
        dino_loss(jnp.zeros((1, 3, 4)), jnp.zeros((1, 2, 4)))
