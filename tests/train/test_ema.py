import jax.numpy as jnp
import numpy as np

from dinov2_jax.train.ema import ema_update


def test_ema_formula():
    t = {"a": jnp.array([1.0, 2.0]), "b": {"c": jnp.array(3.0)}}
    s = {"a": jnp.array([3.0, 0.0]), "b": {"c": jnp.array(-1.0)}}
    out = ema_update(t, s, jnp.float32(0.75))
    np.testing.assert_allclose(out["a"], [1.5, 1.5])
    np.testing.assert_allclose(out["b"]["c"], 2.0)
    same = ema_update(t, s, 1.0)  # final momentum 1.0 freezes the teacher
    np.testing.assert_allclose(same["a"], t["a"])
