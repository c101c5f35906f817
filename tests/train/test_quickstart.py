"""End to end through the CLI (`python -m dinov2_jax.train`) with the real objective, data and export,
on a reduced quickstart (tiny ViT, tiny crops): runs, kill + resume exactness, SIGTERM, NaN.

Every run is a real subprocess, so restarts are real restarts (fresh process, state from disk only).
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dinov2_jax.train.checkpoint import Checkpointer

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

TINY = [
    "--config.student.embed_dim=32", "--config.student.depth=2", "--config.student.num_heads=2",
    "--config.student.patch_size=8", "--config.crops.global_crops_size=32", "--config.crops.local_crops_size=16",
    "--config.crops.local_crops_number=2", "--config.train.batch_size_per_gpu=4",
    "--config.dino.head_n_prototypes=64", "--config.dino.head_hidden_dim=64", "--config.dino.head_bottleneck_dim=32",
    "--config.ibot.head_n_prototypes=64", "--config.ibot.head_hidden_dim=64", "--config.ibot.head_bottleneck_dim=32",
    "--config.train.OFFICIAL_EPOCH_LENGTH=4", "--config.optim.epochs=3", "--config.train.log_period=1",
    "--config.evaluation.eval_period_iterations=0", "--config.evaluation.evaluators.knn.at_start=False",
    "--config.train.num_workers=0",
]


def cli(out, *extra):
    return [sys.executable, "-m", "dinov2_jax.train", "--config", "configs/quickstart.py",
            f"--config.train.output_dir={out}", *TINY, *extra]


def env():
    return dict(os.environ, JAX_PLATFORMS="cpu")


def run_cli(out, *extra, timeout=600):
    r = subprocess.run(cli(out, *extra), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)
    return r


def losses(out):
    """iteration -> total loss of that iteration (a re-run iteration after a restart: the last value)."""
    got = {}
    for line in open(os.path.join(out, "training_metrics.json")):
        r = json.loads(line)
        got[r["iteration"]] = r["last_total_loss"]
    return got


def final_state(out):
    ck = Checkpointer(os.path.join(out, "ckpt"))
    step = ck.latest_step()
    state, data, cfg = ck.restore_raw(step)
    ck.close()
    return step, state, data


def assert_states_close(a, b):
    import jax

    fa, fb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
    assert [p for p, _ in fa] == [p for p, _ in fb]
    for (p, x), (_, y) in zip(fa, fb):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(p))


@pytest.mark.heavy  # ~1 min on an idle 2-core CPU (mostly compilation), several when the machine is busy
def test_reduced_quickstart_runs_logs_exports_and_evaluates(tmp_path):
    out = tmp_path / "run"
    r = run_cli(out, "--config.train.max_iterations=3", "--config.evaluation.eval_period_iterations=2",
                "--config.evaluation.evaluators.knn.at_start=True",
                "--config.evaluation.evaluators.knn.max_samples=40")
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(losses(out)) == [0, 1, 2]
    rec = [json.loads(l) for l in open(out / "training_metrics.json")][-1]
    for k in ("total_loss", "dino_local_crops_loss", "dino_global_crops_loss", "koleo_loss", "ibot_loss", "lr",
              "wd", "mom", "last_layer_lr", "teacher_temp", "grad_norm/backbone", "images_per_s", "iter_time"):
        assert k in rec and np.isfinite(rec[k]), k
    assert os.listdir(out / "tb")
    knn = [json.loads(l) for l in open(out / "knn_metrics.json")]
    assert [k["iteration"] for k in knn] == [-1, 1]
    assert "('full', 10) Top 1" in knn[-1]
    from PIL import Image

    for png in (out / "training_curves.png", out / "eval" / "training_1" / "pca.png"):
        assert np.asarray(Image.open(png)).std() > 0, png  # drawn, not blank
    step, state, data = final_state(out)
    assert step == 3 and int(state["step"]) == 3
    # the teacher export is a converter directory with the heads
    from dinov2_jax.convert import load_converted

    model, heads = load_converted(str(out / "eval" / "training_1"), with_heads=True)
    assert model.embed_dim == 32 and set(heads) == {"dino_head"}
    cfg = json.load(open(out / "config.json"))
    assert cfg["optim"]["lr"] == pytest.approx(0.012 * (4 / 1024) ** 0.5)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """Uninterrupted run of the whole (tiny) schedule: 12 iterations + the official extra one."""
    out = tmp_path_factory.mktemp("ref") / "run"
    r = run_cli(out, "--config.train.checkpoint_period=100")
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def _wait_for(pred, proc, timeout=600):
    t0 = time.time()
    while not pred():
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert time.time() - t0 < timeout
        time.sleep(0.05)


@pytest.mark.heavy
def test_kill_and_restart_is_exact(tmp_path, reference_run):
    out = tmp_path / "run"
    proc = subprocess.Popen(cli(out, "--config.train.checkpoint_period=3"), cwd=ROOT, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: os.path.isdir(out / "ckpt" / "3"), proc)
    proc.kill()  # SIGKILL: no chance to save anything more
    proc.wait()
    killed_at = max(losses(out))
    assert killed_at < 12
    r = run_cli(out, "--config.train.checkpoint_period=3")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Resuming from" in r.stdout + r.stderr
    ref, got = losses(reference_run), losses(out)
    assert sorted(got) == sorted(ref) == list(range(13))
    for it in ref:
        assert got[it] == pytest.approx(ref[it], rel=1e-5, abs=1e-6), it
    s_ref, s_got = final_state(reference_run), final_state(out)
    assert s_ref[0] == s_got[0] == 13 and s_ref[2] == s_got[2]
    assert_states_close(s_got[1], s_ref[1])


@pytest.mark.heavy
def test_sigterm_saves_exits_zero_and_resumes(tmp_path, reference_run):
    out = tmp_path / "run"
    proc = subprocess.Popen(cli(out, "--config.train.checkpoint_period=100"), cwd=ROOT, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for(lambda: os.path.exists(out / "training_metrics.json") and len(losses(out)) >= 2, proc)
    proc.send_signal(signal.SIGTERM)
    text, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, text[-3000:]
    assert "Received signal 15" in text
    step, _, _ = final_state(out)
    assert step == max(losses(out)) + 1 < 13  # saved right after the step it was running
    r = run_cli(out, "--config.train.checkpoint_period=100")
    assert r.returncode == 0, r.stderr[-3000:]
    ref, got = losses(reference_run), losses(out)
    for it in ref:
        assert got[it] == pytest.approx(ref[it], rel=1e-5, abs=1e-6), it
    assert_states_close(final_state(out)[1], final_state(reference_run)[1])


@pytest.mark.heavy
def test_nan_loss_stops_with_iteration_and_keeps_checkpoint(tmp_path):
    # A real divergence: a learning rate of ~1e37 (finite in float32) blows the weights up after the
    # warmup's first non-zero lr; the forward pass then overflows and the loss becomes NaN.
    out = tmp_path / "run"
    r = run_cli(out, "--config.optim.base_lr=1e38", "--config.train.checkpoint_period=1",
                "--config.train.max_iterations=8")
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    import re

    m = re.search(r"iteration (\d+)", r.stderr)
    assert "training diverged" in r.stderr and m, r.stderr[-2000:]
    bad_it = int(m.group(1))
    step, state, _ = final_state(out)
    assert step is not None and step <= bad_it + 1
    assert f"ckpt/{step}) is kept" in r.stderr and "intact" not in r.stderr  # not verified: not "intact"
    import jax

    for leaf in jax.tree.leaves(state):
        if np.issubdtype(leaf.dtype, np.floating):
            assert np.all(np.isfinite(leaf))


@pytest.mark.heavy
def test_two_device_mesh_run_and_resume(tmp_path):
    """2 CPU devices (data axis 2): batch sharded over the mesh, checkpoint restored onto the mesh."""
    out = tmp_path / "run"
    e = dict(env(), XLA_FLAGS="--xla_force_host_platform_device_count=2")
    args = cli(out, "--config.train.batch_size_per_gpu=2", "--config.train.max_iterations=2")
    r = subprocess.run(args, cwd=ROOT, env=e, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = json.load(open(out / "config.json"))
    assert cfg["optim"]["lr"] == pytest.approx(0.012 * (4 / 1024) ** 0.5)  # global batch 2 x 2 devices
    args = cli(out, "--config.train.batch_size_per_gpu=2", "--config.train.max_iterations=3")
    r = subprocess.run(args, cwd=ROOT, env=e, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    got = losses(out)
    assert sorted(got) == [0, 1, 2] and all(np.isfinite(v) for v in got.values())


@pytest.mark.heavy  # the README's quickstart command itself (the `quickstart_run` fixture, tests/conftest.py)
def test_full_quickstart_learns_in_every_term(quickstart_run):
    """The documented quickstart (configs/quickstart.py, nothing overridden): both DINO terms end below
    their uniform-target value (fraction of the DINO terms x ln K: a teacher that carries no information
    about the image), and the teacher's k-NN ends far above the random init."""
    import math

    out = quickstart_run
    cfg = json.load(open(out / "config.json"))
    n_local, k = cfg["crops"]["local_crops_number"], cfg["dino"]["head_n_prototypes"]
    n_terms = 2 * n_local + 2  # each local crop against each of the 2 teacher crops, + the 2 swapped globals
    uniform = {"dino_local_crops_loss": 2 * n_local / n_terms * math.log(k),
               "dino_global_crops_loss": 2 / n_terms * math.log(k)}
    recs = [json.loads(l) for l in open(out / "training_metrics.json")]
    assert recs[-1]["iteration"] == 300
    for key, u in uniform.items():
        first = recs[0][key]
        last = np.mean([rec[key] for rec in recs[-5:]])  # the last 5 logged values (every 10 iterations)
        assert last < 0.9 * u, (key, last, u)  # measured: 0.7-0.8 x uniform
        assert last < 0.9 * first, (key, first, last)  # the DINO terms go down, not up
    knn = {rec["iteration"]: rec["('full', 10) Top 1"] for rec in map(json.loads, open(out / "knn_metrics.json"))}
    assert sorted(knn) == [-1, 149, 299]
    assert knn[-1] < 40 and knn[299] > 85, knn  # measured: ~20 % at init (chance 10 %), >95 % at the end
