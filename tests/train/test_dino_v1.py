"""DINO v1 recipe (configs/dino_vits16.py): one train step against the original DINO code's loss and update
(fixture: fixtures/make_dino_v1_fixture.py), and the recipe's values."""
import math
import os

import jax
import numpy as np
import pytest

from dinov2_jax import config as config_lib
from dinov2_jax.data.augmentations import DataAugmentationDINO
from dinov2_jax.data.masking import mask_upperbound
from dinov2_jax.losses.centering import apply_pending
from dinov2_jax.train.schedules import build_schedules
from dinov2_jax.train.train_step import make_train_step
from test_train_step import TINY, assert_tree_close, load_params, official_state  # same folder (pytest prepend mode)

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
FIX = os.path.join(os.path.dirname(__file__), "fixtures", "dino_v1_step_golden.npz")
N_LOCAL, B = 3, 4


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(FIX))


def dino_cfg(overrides=()):
    return config_lib.load_config(os.path.join(ROOT, "configs", "dino_vits16.py"), overrides)


def tiny_cfg():
    c = dino_cfg()
    c.student.patch_size, c.student.drop_path_rate, c.student.attn_impl = 8, 0.0, "xla"
    c.crops.global_crops_size, c.crops.local_crops_size, c.crops.local_crops_number = 32, 16, N_LOCAL
    c.dino.head_n_prototypes, c.dino.head_bottleneck_dim, c.dino.head_hidden_dim = 24, 8, 16
    c.train.batch_size_per_gpu = B
    c.optim.clip_grad = 0.05  # as the fixture: some parameters clipped, others not
    return c


def batch_hp(golden, run, it):
    p = f"{run}/it{it}/"
    g = golden[p + "batch/collated_global_crops"]
    n_tok = (32 // 8) ** 2
    assert mask_upperbound(B, n_tok, (0.1, 0.5), 0.0) == 0  # no masks: empty masked-token buffers
    batch = {"collated_global_crops": g, "collated_local_crops": golden[p + "batch/collated_local_crops"],
             "collated_masks": np.zeros((g.shape[0], n_tok), bool), "mask_indices_list": np.zeros((1, 0), np.int32),
             "masks_weight": np.zeros((1, 0), np.float32), "n_masked_patches": np.zeros((1,), np.int32)}
    hp = {k[len(p) + 3:]: v for k, v in golden.items() if k.startswith(p + "hp/")}
    return batch, hp


@pytest.mark.parametrize("run,n_iters", [("frozen", 1), pytest.param("free", 2, marks=pytest.mark.heavy)])
def test_step_matches_dino_v1(golden, run, n_iters):
    """Loss, center, student (AdamW + per-parameter clipping, frozen last layer in epoch 0, frozen
    weight-norm gain) and EMA teacher after one (two) DINO v1 iterations."""
    cfg = tiny_cfg()
    state = official_state(golden, run, cfg)
    step = jax.jit(make_train_step(cfg, arch_overrides=TINY))
    for it in range(n_iters):
        batch, hp = batch_hp(golden, run, it)
        state, m = step(state, batch, hp)
        assert set(m) >= {"dino_local_crops_loss", "dino_global_crops_loss"}
        assert "ibot_loss" not in m and "koleo_loss" not in m
        np.testing.assert_allclose(m["loss"], golden[f"{run}/it{it}/loss"], rtol=1e-5)
        np.testing.assert_allclose(m["dino_local_crops_loss"] + m["dino_global_crops_loss"], m["loss"], rtol=1e-6)
        for k in ("backbone", "dino_head"):
            np.testing.assert_allclose(m[f"grad_norm/{k}"], golden[f"{run}/it{it}/grad_norm/{k}"], rtol=1e-4)
        np.testing.assert_allclose(apply_pending(state.dino_center).center, golden[f"{run}/it{it}/center"],
                                   rtol=1e-5, atol=1e-6)
    assert_tree_close(state.student, golden, f"{run}/student/", rtol=1e-4, atol=2e-6)
    assert_tree_close(state.teacher, golden, f"{run}/teacher/", rtol=1e-4, atol=2e-6)
    g = np.asarray(state.student["dino_head"]["last_layer"]["weight_g"])
    np.testing.assert_array_equal(g, 1.0)  # frozen gain
    init_v = load_params(golden, f"{run}/init/", state.student)["dino_head"]["last_layer"]["weight_v"]
    moved = not np.allclose(state.student["dino_head"]["last_layer"]["weight_v"], init_v)
    assert moved == (run == "free")  # last layer frozen in epoch 0 only


@pytest.mark.heavy
def test_per_parameter_clipping_is_what_matches(golden):
    """The fixture tells the clipping rules apart: the same step with DINOv2's per-submodule clipping
    (everything else equal) misses the DINO v1 student; the loss (before the update) still matches."""
    cfg = tiny_cfg()
    cfg.optim.clip_grad_mode = "per_submodule"
    state = official_state(golden, "frozen", cfg)
    batch, hp = batch_hp(golden, "frozen", 0)
    new, m = jax.jit(make_train_step(cfg, arch_overrides=TINY))(state, batch, hp)
    np.testing.assert_allclose(m["loss"], golden["frozen/it0/loss"], rtol=1e-5)
    with pytest.raises(AssertionError):
        assert_tree_close(new.student, golden, "frozen/student/", rtol=1e-4, atol=2e-6)


def test_recipe_values():
    c = dino_cfg()
    fin = config_lib.finalize_config(c, world_size=8)  # 8 x 64 = 512 images
    assert fin.optim.lr == pytest.approx(0.0005 * 512 / 256)
    assert config_lib.finalize_config(dino_cfg(["train.batch_size_per_gpu=128"]), 8).optim.lr == pytest.approx(0.002)
    assert (c.ibot.loss_weight, c.dino.koleo_loss_weight, c.ibot.mask_sample_probability) == (0.0, 0.0, 0.0)
    assert c.dino.head_n_prototypes == 65536 and c.dino.head_norm_last_layer
    assert (c.crops.local_crops_number, c.crops.global_crops_size, c.crops.local_crops_size) == (10, 224, 96)
    assert (c.crops.global_crops_scale, c.crops.local_crops_scale) == ((0.4, 1.0), (0.05, 0.4))
    aug = DataAugmentationDINO.from_config(c.crops)
    assert (aug.blur_probs, aug.solarize_prob) == ((1.0, 0.1, 0.5), 0.2)
    s = build_schedules(fin)
    L = c.train.OFFICIAL_EPOCH_LENGTH
    assert s["mom"][0] == pytest.approx(0.996) and s["mom"][100 * L - 1] == pytest.approx(1.0, abs=1e-6)
    assert s["wd"][0] == pytest.approx(0.04) and s["wd"][100 * L - 1] == pytest.approx(0.4, abs=1e-6)
    assert s["teacher_temp"][0] == s["teacher_temp"][50 * L] == pytest.approx(0.04)
    assert s["last_layer_lr"][L - 1] == 0.0 and s["last_layer_lr"][L] > 0
    assert (c.optim.clip_grad, c.optim.clip_grad_mode, c.optim.layerwise_decay) == (3.0, "per_parameter", 1.0)


def test_teacher_temp_per_epoch_as_dino_v1():
    """DINOLoss: linspace(0.04, 0.07, 30) indexed by epoch (boosted recipe), then 0.07."""
    c = config_lib.finalize_config(dino_cfg(["teacher.teacher_temp=0.07", "teacher.warmup_teacher_temp_epochs=30",
                                             "train.OFFICIAL_EPOCH_LENGTH=5"]), 1)
    t = build_schedules(c)["teacher_temp"]
    want = np.concatenate([np.linspace(0.04, 0.07, 30), np.full(70, 0.07)])
    got = np.array([t[5 * e + i] for e in range(100) for i in range(5)]).reshape(100, 5)
    np.testing.assert_allclose(got, np.repeat(want[:, None], 5, axis=1), rtol=1e-12)
    with pytest.raises(ValueError, match="teacher_temp_schedule"):
        build_schedules(config_lib.finalize_config(dino_cfg(["teacher.teacher_temp_schedule=per_step"]), 1))


def test_bad_clip_mode_and_scaling_rule_raise():
    with pytest.raises(ValueError, match="clip_grad_mode"):
        make_train_step(dino_cfg(["optim.clip_grad_mode=global"]), arch_overrides=TINY)
    with pytest.raises(NotImplementedError, match="linear_wrt_256"):
        config_lib.finalize_config(dino_cfg(["optim.scaling_rule=linear"]), 1)
    with pytest.raises(ValueError, match="blur_probs"):
        DataAugmentationDINO(blur_probs=(1.0, 0.1))
    assert math.isclose(config_lib.finalize_config(config_lib.load_config(
        os.path.join(ROOT, "configs", "ssl_default.py")), 16).optim.lr, 0.004)  # DINOv2 rule unchanged
