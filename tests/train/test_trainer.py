"""Training-loop machinery with a toy objective (linear regression with a random-key noise term).

The toy keeps these tests independent of the ViT/objective/data modules and fast; the same loop with
the real components is exercised end to end in tests/train/test_quickstart.py.
"""
import json
import math
import os
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinov2_jax import config as config_lib
from dinov2_jax.train import trainer
from dinov2_jax.train.checkpoint import Checkpointer

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs")


class ToyLoader:
    """Deterministic infinite batches; state = number of batches served."""

    def __init__(self, seed, kill_at=None):
        self.seed, self.pos, self.kill_at = seed, 0, kill_at

    def __next__(self):
        if self.kill_at is not None and self.pos == self.kill_at:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives "during" this step
        r = np.random.default_rng([self.seed, self.pos])
        self.pos += 1
        x = r.normal(size=(8, 4)).astype(np.float32)
        return {"x": x, "y": x @ np.arange(1, 5, dtype=np.float32)}

    def get_state(self):
        return {"pos": self.pos, "blob": b"\x00\x01"}

    def set_state(self, s):
        assert s["blob"] == b"\x00\x01"
        self.pos = s["pos"]


def toy_components(kill_at=None):
    def create_train_state(cfg, key):
        return {"w": jnp.zeros(4), "step": jnp.zeros((), jnp.int32), "rng": key}

    def make_train_step(cfg):
        @jax.jit
        def step(state, batch, hp):
            rng, sub = jax.random.split(state["rng"])
            noise = 0.01 * jax.random.normal(sub, ())

            def loss_fn(w):
                return jnp.mean((batch["x"] @ w - batch["y"]) ** 2) + noise

            loss, g = jax.value_and_grad(loss_fn)(state["w"])
            new = {**state, "w": state["w"] - hp["lr"] * g, "step": state["step"] + 1, "rng": rng}
            return new, {"total_loss": loss, "grad_norm/backbone": jnp.linalg.norm(g)}
        return step

    def build_schedules(cfg):
        n = cfg.optim.epochs * cfg.train.OFFICIAL_EPOCH_LENGTH
        return {"lr": np.full(n, cfg.optim.lr), "wd": np.linspace(0.04, 0.4, n)}

    def hparams_at(s, it):
        return {k: float(v[it]) if it < len(v) else float(v[-1]) for k, v in s.items()}

    exported = []
    comp = trainer.Components(
        create_train_state=create_train_state, make_train_step=make_train_step,
        build_schedules=build_schedules, hparams_at=hparams_at,
        make_train_loader=lambda cfg, seed: ToyLoader(seed, kill_at),
        export_teacher=lambda state, cfg, out: exported.append(out))
    comp.exported = exported
    return comp


def toy_cfg(out, **over):
    cfg = config_lib.load_config_file(os.path.join(CONFIGS, "ssl_default.py"))
    cfg.train.output_dir = str(out)
    cfg.train.dataset_path = "demo"
    cfg.train.batch_size_per_gpu = 8
    cfg.train.OFFICIAL_EPOCH_LENGTH = 4
    cfg.optim.epochs = 3  # 12 schedule iterations -> official loop runs it = 0..12
    cfg.optim.base_lr = 0.05 * math.sqrt(1024 / 8)  # lr 0.05 after the scaling rule on 1 device
    cfg.train.checkpoint_period = 5
    cfg.train.log_period = 2
    cfg.train.max_to_keep = 2
    cfg.evaluation.eval_period_iterations = 6
    for k, v in over.items():
        node = cfg
        *parents, leaf = k.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = v
    return cfg


def run(cfg, comp=None):
    return trainer.train(cfg, comp or toy_components(), use_mesh=False, stream=open(os.devnull, "w"))


def restore_w(out):
    ck = Checkpointer(os.path.join(out, "ckpt"))
    like = {"w": jnp.zeros(4), "step": jnp.zeros((), jnp.int32), "rng": jax.random.key(0)}
    step = ck.latest_step()
    state, data, cfg = ck.restore(step, like)
    ck.close()
    return step, state, data, cfg


def test_full_run_iterations_logs_and_checkpoints(tmp_path):
    comp = toy_components()
    res = run(toy_cfg(tmp_path), comp)
    # official quirk: iterations 0..max_iter inclusive (13 steps for a 12-iteration schedule)
    assert sorted(res.losses) == list(range(13))
    assert res.losses[12] < res.losses[0] / 10  # it learns
    step, state, data, cfg = restore_w(tmp_path)
    assert step == 13 and int(state["step"]) == 13 and data["pos"] == 13
    assert cfg["optim"]["lr"] == pytest.approx(0.05)
    # checkpoints at it+1 = 5, 10 and the end (13); max_to_keep=2
    assert Checkpointer(os.path.join(tmp_path, "ckpt")).all_steps() == [10, 13]
    lines = [json.loads(l) for l in open(tmp_path / "training_metrics.json")]
    assert [l["iteration"] for l in lines] == [0, 1, 3, 5, 7, 9, 11, 12]
    for key in ("total_loss", "lr", "wd", "iter_time", "data_time", "images_per_s", "grad_norm/backbone"):
        assert key in lines[-1]
    assert os.listdir(tmp_path / "tb")
    saved = json.load(open(tmp_path / "config.json"))
    assert saved["optim"]["lr"] == pytest.approx(0.05)
    assert os.path.exists(tmp_path / "config.yaml")
    assert comp.exported == [os.path.join(str(tmp_path), "eval", "training_5"),
                             os.path.join(str(tmp_path), "eval", "training_11")]
    assert os.path.getsize(tmp_path / "training_curves.png") > 10_000


def test_resume_is_exact(tmp_path):
    ref = run(toy_cfg(tmp_path / "a"))
    _, ref_state, _, _ = restore_w(tmp_path / "a")
    first = run(toy_cfg(tmp_path / "b", **{"train.max_iterations": 7}))
    assert sorted(first.losses) == list(range(7))
    second = run(toy_cfg(tmp_path / "b"))  # same output dir: resumes from iteration 7
    assert second.start_iteration == 7 and sorted(second.losses) == list(range(7, 13))
    for it in range(13):
        got = first.losses.get(it, second.losses.get(it))
        assert got == pytest.approx(ref.losses[it], rel=1e-6, abs=1e-7)
    _, state, _, _ = restore_w(tmp_path / "b")
    np.testing.assert_allclose(np.asarray(state["w"]), np.asarray(ref_state["w"]), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(jax.random.key_data(state["rng"]), jax.random.key_data(ref_state["rng"]))
    # a finished run restarted does nothing
    again = run(toy_cfg(tmp_path / "b"))
    assert again.losses == {} and again.start_iteration == 13


def test_sigterm_saves_and_resumes(tmp_path):
    ref = run(toy_cfg(tmp_path / "a"))
    res = run(toy_cfg(tmp_path / "b"), toy_components(kill_at=3))
    assert res.stopped_by_signal and sorted(res.losses) == [0, 1, 2, 3]
    step, state, data, _ = restore_w(tmp_path / "b")
    assert step == 4 and data["pos"] == 4
    rest = run(toy_cfg(tmp_path / "b"))
    assert rest.start_iteration == 4
    for it in range(4, 13):
        assert rest.losses[it] == pytest.approx(ref.losses[it], rel=1e-6, abs=1e-7)


def test_nan_loss_stops_with_iteration_and_keeps_last_good_checkpoint(tmp_path):
    # A too large lr makes the toy regression diverge geometrically until the loss overflows to inf.
    cfg = toy_cfg(tmp_path, **{"optim.base_lr": 60 * math.sqrt(1024 / 8), "train.checkpoint_period": 2})
    with pytest.raises(trainer.TrainingDivergedError, match=r"iteration (\d+)") as e:
        run(cfg)
    bad_it = int(__import__("re").search(r"at iteration (\d+)", str(e.value)).group(1))
    step, state, _, _ = restore_w(tmp_path)
    assert step is not None and step <= bad_it
    assert np.all(np.isfinite(np.asarray(state["w"])))
    assert f"ckpt/{step}) is kept" in str(e.value)  # names the checkpoint it kept
    assert "intact" not in str(e.value)  # not verified yet: it must not be called intact


def test_half_written_checkpoint_is_ignored(tmp_path):
    cfg = toy_cfg(tmp_path, **{"train.max_iterations": 5})
    run(cfg)
    ck = os.path.join(tmp_path, "ckpt")
    # what a run killed mid-save leaves behind: orbax's temporary directory, never renamed
    shutil.copytree(os.path.join(ck, "5"), os.path.join(ck, "9.orbax-checkpoint-tmp-1234567"))
    assert Checkpointer(ck).latest_step() == 5
    res = run(toy_cfg(tmp_path, **{"train.max_iterations": 7}))
    assert res.start_iteration == 5


def toy_components_with_teacher():
    comp = toy_components()
    create = comp.create_train_state
    comp.create_train_state = lambda cfg, key: {**create(cfg, key), "student": {"w": jnp.zeros(4) + cfg.train.seed},
                                                "teacher": {"w": jnp.ones(2)}}
    return comp


def test_model_weights_initialises_params_only(tmp_path):
    first = run(toy_cfg(tmp_path / "a", **{"train.max_iterations": 3, "train.seed": 5}), toy_components_with_teacher())
    assert first.next_iteration == 3
    out = tmp_path / "b"
    cfg = toy_cfg(out, **{"train.max_iterations": 1, "MODEL.WEIGHTS": str(tmp_path / "a" / "ckpt")})
    res = run(cfg, toy_components_with_teacher())
    assert res.start_iteration == 0  # iteration and optimizer state start fresh
    ck = Checkpointer(os.path.join(out, "ckpt"))
    raw, _, _ = ck.restore_raw(ck.latest_step())
    np.testing.assert_array_equal(raw["student"]["w"], np.full(4, 5.0))  # seed-5 student, not seed 0
    cfg = toy_cfg(tmp_path / "c", **{"MODEL.WEIGHTS": str(tmp_path / "nope")})
    with pytest.raises(FileNotFoundError, match="MODEL.WEIGHTS"):
        run(cfg, toy_components_with_teacher())


def test_bad_inputs_have_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run(toy_cfg(tmp_path, **{"train.dataset_path": "folder:/no/such/dir"}))
    blocker = tmp_path / "a_file"
    blocker.write_text("x")  # a directory cannot be created below a file (works as root too)
    with pytest.raises(PermissionError, match="not writable"):
        run(toy_cfg(blocker / "out"))


def tiny_real_cfg(out, *extra):
    import importlib.util

    spec = importlib.util.spec_from_file_location("_qs", os.path.join(os.path.dirname(__file__), "test_quickstart.py"))
    qs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(qs)
    TINY = qs.TINY

    over = [a[len("--config."):] for a in TINY] + list(extra) + [f"train.output_dir={out}"]
    return config_lib.load_config(os.path.join(CONFIGS, "quickstart.py"), over)


@pytest.mark.heavy  # real ViT objective: compiles the train step (~1 min on an idle 2-core CPU)
def test_distillation_teacher_is_loaded_and_frozen(tmp_path):
    """Export a (random) model with heads, use it as teacher.pretrained_weights: the run's teacher is
    exactly those weights before and after training (no EMA), the student trains."""
    cfg = config_lib.finalize_config(tiny_real_cfg(tmp_path / "a"), 1)
    comp = trainer.default_components()
    donor = comp.create_train_state(cfg, jax.random.key(123))
    export_dir = str(tmp_path / "teacher_export")
    trainer.export_teacher(donor, cfg, export_dir)

    cfg2 = tiny_real_cfg(tmp_path / "b", f"teacher.pretrained_weights={export_dir}", "train.max_iterations=2")
    res = trainer.train(cfg2, use_mesh=False, stream=open(os.devnull, "w"))
    assert sorted(res.losses) == [0, 1]
    ck = Checkpointer(os.path.join(tmp_path / "b", "ckpt"))
    state, _, _ = ck.restore_raw(ck.latest_step())
    ck.close()
    for got, want in zip(jax.tree.leaves(state["teacher"]), jax.tree.leaves(jax.device_get(donor.teacher))):
        np.testing.assert_array_equal(got, want)
    s0 = jax.tree.leaves(donor.student)
    moved = [np.abs(a - np.asarray(b)).max() for a, b in zip(jax.tree.leaves(state["student"]), s0)]
    assert max(moved) > 0  # the student is a fresh model that trains (different init seed from the donor)

    bad = tiny_real_cfg(tmp_path / "c", f"teacher.pretrained_weights={tmp_path / 'nope'}")
    with pytest.raises(FileNotFoundError, match="pretrained_weights"):
        trainer.train(bad, use_mesh=False, stream=open(os.devnull, "w"))
