import jax
import numpy as np

from dinov2_jax.train.state import TrainState
from dinov2_jax.train.train_step import create_train_state
from test_train_step import TINY, tiny_cfg  # same folder (pytest prepend import mode)


def test_fresh_state():
    cfg = tiny_cfg(separate_head=True)
    st = create_train_state(cfg, jax.random.key(0), arch_overrides=TINY)
    assert isinstance(st, TrainState)
    assert set(st.student) == {"backbone", "dino_head", "ibot_head"}
    assert len(st.student["backbone"]["blocks"]) == 2
    for a, b in zip(jax.tree_util.tree_leaves(st.student), jax.tree_util.tree_leaves(st.teacher)):
        np.testing.assert_array_equal(a, b)  # teacher starts as a copy of the student
    assert st.dino_center.center.shape == (24,) and st.ibot_center.center.shape == (20,)
    assert float(st.dino_center.has_pending) == 0 and int(st.step) == 0
    # a plain pytree: flattens and round-trips
    leaves, tdef = jax.tree_util.tree_flatten(st)
    assert isinstance(jax.tree_util.tree_unflatten(tdef, leaves), TrainState)
