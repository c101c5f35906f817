import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinov2_jax.losses import koleo_loss


def test_matches_official(golden):
    np.testing.assert_allclose(koleo_loss(jnp.asarray(golden["koleo_x"])), golden["koleo_loss"], rtol=1e-5)


def test_groups_are_mean_of_per_shard_official(golden):
    got = koleo_loss(jnp.asarray(golden["koleo_x"]), num_groups=2)
    np.testing.assert_allclose(got, golden["koleo_loss_2groups"], rtol=1e-5)


def test_gradient_matches_torch(golden):
    g = jax.grad(koleo_loss)(jnp.asarray(golden["koleo_x"]))
    np.testing.assert_allclose(g, golden["koleo_grad"], rtol=1e-4, atol=1e-6)


def test_hand_value_orthonormal():
    # one-hot rows: normalised, nearest neighbour at distance sqrt(2) (+ eps inside the difference)
    x = jnp.eye(4, 6)
    d = np.sqrt(2 * (1 + 1e-8) ** 2 + 4 * 1e-16)
    np.testing.assert_allclose(koleo_loss(x), -np.log(d + 1e-8), rtol=1e-6)


def test_scale_invariant_and_bad_groups():
    x = jax.random.normal(jax.random.key(0), (6, 5))
    np.testing.assert_allclose(koleo_loss(x), koleo_loss(7.0 * x), rtol=1e-5)
    with pytest.raises(ValueError, match="num_groups"):
        koleo_loss(x, num_groups=4)
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        koleo_loss(x[None])
