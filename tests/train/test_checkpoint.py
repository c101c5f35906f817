"""Orbax checkpoint wrapper (dinov2_jax/train/checkpoint.py)."""
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np

from dinov2_jax.train.checkpoint import Checkpointer


def make_state(seed):
    k = jax.random.key(seed)
    return {"params": {"w": jax.random.normal(k, (3, 5)), "b": jnp.arange(5.0)},
            "step": jnp.int32(seed), "rng": jax.random.fold_in(k, 7),
            "opt": (jnp.ones(2, jnp.bfloat16), {"count": jnp.zeros((), jnp.int32)})}


def assert_tree_equal(a, b):
    a = jax.tree.map(lambda x: jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x, a)
    b = jax.tree.map(lambda x: jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x, b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32))


def test_roundtrip_keys_bytes_and_config(tmp_path):
    ck = Checkpointer(str(tmp_path), max_to_keep=2)
    state = make_state(3)
    data = {"pos": np.int64(12), "raw": b"\xff\x00grain", "nested": [1, {"a": 2.5}]}
    ck.save(7, state, data, json.dumps({"optim": {"lr": 0.1}}))
    ck.wait()
    state2, data2, cfg = Checkpointer(str(tmp_path)).restore(7, make_state(0))
    assert_tree_equal(state2, state)
    assert jax.dtypes.issubdtype(state2["rng"].dtype, jax.dtypes.prng_key)
    assert data2 == {"pos": 12, "raw": b"\xff\x00grain", "nested": [1, {"a": 2.5}]}
    assert cfg == {"optim": {"lr": 0.1}}
    raw, data3, _ = Checkpointer(str(tmp_path)).restore_raw(7)
    np.testing.assert_array_equal(raw["params"]["w"], np.asarray(state["params"]["w"]))
    np.testing.assert_array_equal(raw["rng"], np.asarray(jax.random.key_data(state["rng"])))
    assert data3 == data2
    ck.close()


def test_keeps_last_k_and_ignores_unfinished(tmp_path):
    ck = Checkpointer(str(tmp_path), max_to_keep=2)
    for step in (1, 2, 3):
        ck.save(step, make_state(step), {"pos": step}, "{}")
    ck.close()
    assert Checkpointer(str(tmp_path)).all_steps() == [2, 3]
    # A save interrupted before orbax's final rename leaves only a temporary directory behind.
    shutil.copytree(tmp_path / "3", tmp_path / "4.orbax-checkpoint-tmp-99")
    fresh = Checkpointer(str(tmp_path))
    assert fresh.latest_step() == 3
    state, data, _ = fresh.restore(3, make_state(0))
    assert data == {"pos": 3} and int(state["step"]) == 3
