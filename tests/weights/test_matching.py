"""Strict weights matching: every missing, unexpected and mis-shaped parameter is listed, nothing is half-loaded."""
import os

import jax
import numpy as np
import pytest

from dinov2_jax import config as config_lib
from dinov2_jax.train import trainer
from dinov2_jax.weights.matching import check_tree_like, mismatch_message

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs")


def test_check_tree_like_lists_every_difference():
    like = {"a": np.zeros(3), "b": {"c": np.zeros((2, 2)), "d": np.zeros(1)}}
    check_tree_like(like, {"a": np.ones(3), "b": {"c": np.ones((2, 2)), "d": np.ones(1)}}, "same")  # no error
    got = {"a": np.zeros(4), "b": {"c": np.zeros((2, 2)), "e": np.zeros(1)}, "f": np.zeros(2)}
    with pytest.raises(RuntimeError) as e:
        check_tree_like(like, got, "w.pth", hint="fix it", error=RuntimeError)
    msg = str(e.value)
    assert "missing (1): [\"['b']['d']\"]" in msg
    assert "unexpected (2): [\"['b']['e']\", \"['f']\"]" in msg
    assert "mis-shaped (1): [\"['a']: file (4,) vs model (3,)\"]" in msg and "fix it" in msg
    assert mismatch_message("x") is None


def _cfg(out, depth):
    over = ["student.embed_dim=32", f"student.depth={depth}", "student.num_heads=2", "dino.head_n_prototypes=16",
            "dino.head_hidden_dim=16", "dino.head_bottleneck_dim=8", "ibot.head_n_prototypes=16",
            "ibot.head_hidden_dim=16", "ibot.head_bottleneck_dim=8", f"train.output_dir={out}"]
    return config_lib.finalize_config(config_lib.load_config(os.path.join(CONFIGS, "quickstart.py"), over), 1)


def test_student_pretrained_weights_of_another_depth_is_refused(tmp_path):
    from dinov2_jax.train.train_step import create_train_state

    donor_cfg = _cfg(tmp_path / "a", depth=2)
    donor = create_train_state(donor_cfg, jax.random.key(0))
    trainer.export_teacher(donor, donor_cfg, str(tmp_path / "export"))
    cfg = _cfg(tmp_path / "b", depth=3)
    cfg.student.pretrained_weights = str(tmp_path / "export")
    state = create_train_state(cfg, jax.random.key(1))
    with pytest.raises(ValueError, match=r"missing \(\d+\): \[\"\['blocks'\]\[2\]") as e:
        trainer.load_pretrained_student(cfg, state)
    assert "student.pretrained_weights" in str(e.value)
    # the same depth loads, and the student and teacher backbones are exactly the file's
    cfg.student.depth = 2
    state = create_train_state(cfg, jax.random.key(1))
    loaded = trainer.load_pretrained_student(cfg, state)
    for a, b in zip(jax.tree.leaves(loaded.student["backbone"]), jax.tree.leaves(donor.teacher["backbone"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
