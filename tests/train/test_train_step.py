"""The full train step against the official SSLMetaArch (fixture: fixtures/make_train_step_fixture.py)."""
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.ssl_default import get_config
from dinov2_jax.losses.centering import apply_pending
from dinov2_jax.train.optimizer import make_adam
from dinov2_jax.tree_names import path_to_name
from dinov2_jax.train.train_step import create_train_state, make_train_step

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "train_step_golden.npz")
TINY = dict(embed_dim=32, depth=2, num_heads=2)
LOSS_KEYS = ("dino_local_crops_loss", "dino_global_crops_loss", "koleo_loss", "ibot_loss")


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(FIX))


def tiny_cfg(centering="centering", separate_head=False, n_local=2):
    c = get_config()
    c.student.patch_size = 8
    c.student.layerscale = 0.5
    c.student.drop_path_rate = 0.0
    c.student.num_register_tokens = 1
    c.student.attn_impl = "xla"
    c.crops.global_crops_size, c.crops.local_crops_size, c.crops.local_crops_number = 32, 16, n_local
    c.dino.head_n_prototypes, c.dino.head_bottleneck_dim, c.dino.head_hidden_dim = 24, 8, 16
    c.ibot.separate_head = separate_head
    c.ibot.head_n_prototypes, c.ibot.head_bottleneck_dim, c.ibot.head_hidden_dim, c.ibot.head_nlayers = 20, 8, 12, 2
    c.train.centering = centering
    c.train.batch_size_per_gpu = 4
    return c


def torch_to_ours(name: str, v: np.ndarray):
    """Official state-dict entry -> (our dotted name, array)."""
    name = re.sub(r"(dino_head|ibot_head)\.mlp\.(\d)\.", lambda m: f"{m.group(1)}.mlp.{int(m.group(2)) // 2}.", name)
    if name.endswith("patch_embed.proj.weight"):
        return name[:-6] + "kernel", v.transpose(2, 3, 1, 0)
    if name.endswith("last_layer.weight_g"):
        return name, v.reshape(-1)
    if name.endswith("last_layer.weight_v"):
        return name, v.T
    if re.search(r"norm\d?\.weight$", name):
        return name[:-6] + "scale", v
    if name.endswith(".weight"):
        return name[:-6] + "kernel", v.T
    return name, v


def load_params(golden, prefix, like):
    flat = dict(torch_to_ours(k[len(prefix):], v) for k, v in golden.items() if k.startswith(prefix))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    names = [path_to_name(p) for p, _ in leaves]
    assert sorted(names) == sorted(flat), set(names) ^ set(flat)
    out = []
    for (p, ref), n in zip(leaves, names):
        assert flat[n].shape == ref.shape, (n, flat[n].shape, ref.shape)
        out.append(jnp.asarray(flat[n]))
    return jax.tree_util.tree_unflatten(treedef, out)


def official_state(golden, run, cfg):
    state = create_train_state(cfg, jax.random.key(0), arch_overrides=TINY)
    student = load_params(golden, f"{run}/init/", state.student)
    adam = make_adam(cfg.optim.adamw_beta1, cfg.optim.adamw_beta2)
    return state.replace(student=student, teacher=jax.tree.map(jnp.copy, student), opt_state=adam.init(student))


def batch_hp(golden, run, it):
    p = f"{run}/it{it}/"
    batch = {k[len(p) + 6:]: v for k, v in golden.items() if k.startswith(p + "batch/")}
    for k in ("mask_indices_list", "masks_weight", "n_masked_patches"):  # one GPU = one group
        batch[k] = np.asarray(batch[k])[None]
    hp = {k[len(p) + 3:]: v for k, v in golden.items() if k.startswith(p + "hp/")}
    return batch, hp


def assert_tree_close(tree, golden, prefix, rtol, atol, outlier_atol=3e-5):
    """Leaf-wise comparison, except the attention KEY bias (qkv.bias[D:2D]): softmax over keys is invariant
    to it, so its gradient is exactly 0 in exact arithmetic and both frameworks only see float noise
    (~1e-10), which Adam's normalisation turns into arbitrary updates of size ~lr. Its value is checked
    to stay within lr-sized steps of the official one instead.
    Adam divides each gradient by its own running RMS, so an element whose gradient is a near-cancelling
    sum (relative float32 error ~1e-3) moves by a visibly different amount. Hence two levels: every
    element within `outlier_atol` (~1% of one lr step), and all but 0.1% of each array (at least one element,
    for small arrays) within rtol/atol."""
    ref = load_params(golden, prefix, tree)
    bad = []
    for (p, a), b in zip(jax.tree_util.tree_flatten_with_path(tree)[0], jax.tree_util.tree_leaves(ref)):
        name, a, b = path_to_name(p), np.asarray(a), np.asarray(b)
        if name.endswith("attn.qkv.bias"):
            d = a.shape[0] // 3
            np.testing.assert_allclose(a[d:2 * d], b[d:2 * d], atol=1e-2, err_msg=name)
            a, b = np.delete(a, np.s_[d:2 * d]), np.delete(b, np.s_[d:2 * d])
        np.testing.assert_allclose(a, b, atol=outlier_atol, err_msg=name)
        n_off = int(np.sum(~np.isclose(a, b, rtol=rtol, atol=atol)))
        if n_off > max(1, 0.001 * a.size):
            bad.append((name, n_off, a.size, float(np.max(np.abs(a - b)))))
    assert not bad, bad


def check_iteration(golden, run, it, metrics):
    for k in LOSS_KEYS:
        np.testing.assert_allclose(metrics[k], golden[f"{run}/it{it}/loss/{k}"], rtol=1e-5, atol=1e-6, err_msg=k)
    np.testing.assert_allclose(metrics["total_loss"], sum(float(metrics[k]) for k in LOSS_KEYS), rtol=1e-6)
    # optimised loss: displayed koleo and ibot are halved
    want = (metrics["dino_local_crops_loss"] + metrics["dino_global_crops_loss"] + 2 * metrics["koleo_loss"]
            + 2 * metrics["ibot_loss"])
    np.testing.assert_allclose(metrics["loss"], want, rtol=1e-6)
    for k in ("backbone", "dino_head", "ibot_head"):
        key = f"{run}/it{it}/grad_norm/{k}"
        if key in golden:
            np.testing.assert_allclose(metrics[f"grad_norm/{k}"], golden[key], rtol=1e-4, err_msg=k)


def test_centering_shared_head_two_steps(golden):
    cfg = tiny_cfg()
    state = official_state(golden, "center", cfg)
    step = jax.jit(make_train_step(cfg, arch_overrides=TINY))
    for it in range(2):
        batch, hp = batch_hp(golden, "center", it)
        state, metrics = step(state, batch, hp)
        check_iteration(golden, "center", it, metrics)
        # the center the next step uses (lagged update applied)
        np.testing.assert_allclose(apply_pending(state.dino_center).center, golden[f"center/it{it}/dino_center"],
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(apply_pending(state.ibot_center).center, golden[f"center/it{it}/ibot_center"],
                                   rtol=1e-5, atol=1e-6)
    # different mask counts (14 then 16 masked tokens) did not recompile
    assert int(golden["center/it0/batch/n_masked_patches"]) != int(golden["center/it1/batch/n_masked_patches"])
    assert step._cache_size() == 1
    assert int(state.step) == 2
    # after two AdamW steps and two EMA updates
    assert_tree_close(state.student, golden, "center/it1/student/", rtol=1e-4, atol=2e-6)
    assert_tree_close(state.teacher, golden, "center/it1/teacher/", rtol=1e-4, atol=2e-6)


@pytest.mark.heavy
def test_sinkhorn_separate_head(golden):
    cfg = tiny_cfg("sinkhorn_knopp", separate_head=True)
    state = official_state(golden, "sk", cfg)
    assert set(state.student) == {"backbone", "dino_head", "ibot_head"}
    batch, hp = batch_hp(golden, "sk", 0)
    state, metrics = jax.jit(make_train_step(cfg, arch_overrides=TINY))(state, batch, hp)
    check_iteration(golden, "sk", 0, metrics)
    assert_tree_close(state.student, golden, "sk/it0/student/", rtol=1e-4, atol=2e-6)
    assert_tree_close(state.teacher, golden, "sk/it0/teacher/", rtol=1e-4, atol=2e-6)


@pytest.mark.heavy
def test_no_local_crops_divisor_and_frozen_teacher(golden):
    """n_local = 0: the global DINO term is divided by 2 + max(0, 1) = 3 instead of 2 + 2*2 = 6 (official), the other
    terms are unchanged; a frozen (distillation) teacher is not EMA-updated."""
    cfg = tiny_cfg(n_local=0)
    state = official_state(golden, "center", cfg)
    batch, hp = batch_hp(golden, "center", 0)
    batch["collated_local_crops"] = batch["collated_local_crops"][:0]
    new, m = jax.jit(make_train_step(cfg, arch_overrides=TINY, frozen_teacher=True))(state, batch, hp)
    assert "dino_local_crops_loss" not in m
    np.testing.assert_allclose(m["dino_global_crops_loss"], golden["center/it0/loss/dino_global_crops_loss"] * 6 / 3,
                               rtol=1e-5)
    for k in ("koleo_loss", "ibot_loss"):
        np.testing.assert_allclose(m[k], golden[f"center/it0/loss/{k}"], rtol=1e-5, err_msg=k)
    for a, b in zip(jax.tree_util.tree_leaves(new.teacher), jax.tree_util.tree_leaves(state.teacher)):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(new.student["dino_head"]["mlp"][0]["kernel"], state.student["dino_head"]["mlp"][0]["kernel"])


def test_bad_inputs_raise():
    cfg = tiny_cfg()
    step = make_train_step(cfg, arch_overrides=TINY)
    state = create_train_state(cfg, jax.random.key(1), arch_overrides=TINY)
    with pytest.raises(KeyError, match="hparams missing"):
        step(state, {}, {"lr": 0.1})
    hp = dict(lr=0.0, wd=0.0, mom=0.9, teacher_temp=0.04, last_layer_lr=0.0)
    with pytest.raises(KeyError, match="collated_masks"):
        step(state, {"collated_global_crops": np.zeros((8, 32, 32, 3))}, hp)
    cfg.train.centering = "nope"
    with pytest.raises(ValueError, match="centering"):
        make_train_step(cfg, arch_overrides=TINY)


@pytest.mark.heavy
def test_bfloat16_compute_keeps_fp32_params(golden):
    """compute_dtype bfloat16: params, moments and centers stay float32; losses close to the fp32 official."""
    cfg = tiny_cfg()
    cfg.compute_precision.compute_dtype = "bfloat16"
    state = official_state(golden, "center", cfg)
    batch, hp = batch_hp(golden, "center", 0)
    new, m = jax.jit(make_train_step(cfg, arch_overrides=TINY))(state, batch, hp)
    for leaf in jax.tree_util.tree_leaves((new.student, new.teacher, new.opt_state, new.dino_center)):
        assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype
    for k in LOSS_KEYS:
        assert m[k].dtype == jnp.float32
        np.testing.assert_allclose(m[k], golden[f"center/it0/loss/{k}"], rtol=5e-2, err_msg=k)


@pytest.mark.heavy
def test_stochastic_depth_uses_state_rng(golden):
    """drop_path_rate > 0: the student forward depends on state.rng only (same key -> same step, another key
    -> another loss), and the key advances every step."""
    cfg = tiny_cfg()
    cfg.student.drop_path_rate = 0.5
    state = official_state(golden, "center", cfg)
    batch, hp = batch_hp(golden, "center", 0)
    step = jax.jit(make_train_step(cfg, arch_overrides=TINY))
    s1, m1 = step(state, batch, hp)
    _, m1b = step(state, batch, hp)
    _, m2 = step(state.replace(rng=jax.random.key(123)), batch, hp)
    np.testing.assert_array_equal(m1["loss"], m1b["loss"])
    assert float(m1["loss"]) != float(m2["loss"])
    assert not np.array_equal(jax.random.key_data(s1.rng), jax.random.key_data(state.rng))
    # the teacher never drops paths: its targets, hence the centers, do not depend on the key
    np.testing.assert_allclose(apply_pending(s1.dino_center).center, golden["center/it0/dino_center"],
                               rtol=1e-5, atol=1e-6)
