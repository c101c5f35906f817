"""Failure handling of the trainer (toy objective of test_trainer.py): damaged checkpoints, input checks
at start, the output-directory lock, SIGINT."""
import io
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from test_trainer import ToyLoader, restore_w, run, toy_cfg, toy_components

from dinov2_jax.train import trainer
from dinov2_jax.train.checkpoint import CHECKSUMS, Checkpointer, NoUsableCheckpointError, verify_checksums
from dinov2_jax.train.run_checks import LOCK_NAME, OutputDirInUseError


def _largest_array_file(step_dir):
    files = []
    for d, _, fs in os.walk(os.path.join(step_dir, "state")):
        files += [os.path.join(d, f) for f in fs if "/d/" in os.path.join(d, f) + "/"]
    return max(files, key=os.path.getsize)


def _truncate(step_dir):
    f = _largest_array_file(step_dir)
    with open(f, "r+b") as fh:
        fh.truncate(os.path.getsize(f) // 2)


def _delete_metadata(step_dir):
    os.remove(os.path.join(step_dir, "state", "_METADATA"))


def _flip_bytes(step_dir):
    f = _largest_array_file(step_dir)
    data = bytearray(open(f, "rb").read())
    for i in range(len(data) // 2, len(data) // 2 + 4):
        data[i] ^= 0xFF
    open(f, "wb").write(bytes(data))


@pytest.fixture(scope="module")
def reference_losses(tmp_path_factory):
    return run(toy_cfg(tmp_path_factory.mktemp("ref"))).losses


@pytest.mark.parametrize("damage", [_truncate, _delete_metadata, _flip_bytes])
def test_damaged_newest_checkpoint_falls_back_to_previous(tmp_path, damage, reference_losses):
    cfg = toy_cfg(tmp_path, **{"train.max_iterations": 10, "train.max_to_keep": 3})
    run(cfg)
    ck = tmp_path / "ckpt"
    assert Checkpointer(str(ck)).all_steps() == [5, 10]
    assert verify_checksums(ck / "10") is None and (ck / "10" / CHECKSUMS).exists()
    damage(str(ck / "10"))
    assert verify_checksums(ck / "10") is not None

    log = io.StringIO()
    res = trainer.train(toy_cfg(tmp_path), toy_components(), use_mesh=False, stream=log)
    text = log.getvalue()
    assert f"checkpoint {ck}/10 is damaged" in text, text
    assert "Resuming from" in text and f"{ck}/5 (iteration 5)" in text
    assert (ck / "damaged_10").is_dir()  # set aside for inspection, not deleted
    assert res.start_iteration == 5 and sorted(res.losses) == list(range(5, 13))
    for it in range(5, 13):  # identical to an uninterrupted run
        assert res.losses[it] == pytest.approx(reference_losses[it], rel=1e-6, abs=1e-7)
    assert Checkpointer(str(ck)).latest_step() == 13


def test_checkpoint_without_checksums_is_used_only_with_a_warning(tmp_path):
    run(toy_cfg(tmp_path, **{"train.max_iterations": 5}))
    os.remove(tmp_path / "ckpt" / "5" / CHECKSUMS)  # a run killed between Orbax's commit and the checksums
    log = io.StringIO()
    res = trainer.train(toy_cfg(tmp_path, **{"train.max_iterations": 6}), toy_components(), use_mesh=False,
                        stream=log)
    assert res.start_iteration == 5
    assert "has no checksum file" in log.getvalue() and "structure and finite values only" in log.getvalue()


def test_no_usable_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    run(toy_cfg(tmp_path, **{"train.max_iterations": 5}))
    _truncate(str(tmp_path / "ckpt" / "5"))
    with pytest.raises(NoUsableCheckpointError, match="start afresh"):
        run(toy_cfg(tmp_path))


@pytest.mark.parametrize("key,value,match", [
    ("train.batch_size_per_gpu", -4, "batch_size_per_gpu=-4"),
    ("train.batch_size_per_gpu", 0, "batch_size_per_gpu=0"),
    ("train.checkpoint_period", 0, "checkpoint_period=0"),
    ("train.log_period", 0, "log_period=0"),
    ("train.max_iterations", -5, "max_iterations=-5"),
    ("train.max_iterations", 0, "max_iterations=0"),
])
def test_bad_numbers_fail_at_start(tmp_path, key, value, match):
    with pytest.raises(ValueError, match=match):
        run(toy_cfg(tmp_path, **{key: value}))
    assert not (tmp_path / "ckpt").exists()


def test_missing_eval_dataset_fails_before_the_first_step(tmp_path):
    class Boom(ToyLoader):
        def __next__(self):
            raise AssertionError("training started")

    comp = toy_components()
    comp.make_train_loader = lambda cfg, seed: Boom(seed)
    import ml_collections

    def with_knn(train, val):
        cfg = toy_cfg(tmp_path)
        cfg.evaluation.evaluators.knn = ml_collections.ConfigDict(dict(type="knn", train_dataset=train,
                                                                       val_dataset=val))
        return cfg

    with pytest.raises(FileNotFoundError, match="evaluators.knn.train_dataset='folder:/no/such/train'"):
        run(with_knn("folder:/no/such/train", "demo"), comp)
    with pytest.raises(FileNotFoundError, match="evaluators.knn.val_dataset"):
        run(with_knn("demo", "folder:/nope"), comp)
    assert not (tmp_path / "ckpt").exists()


def test_checkpoint_is_saved_before_the_periodic_evaluation(tmp_path):
    """An evaluation that fails must not cost the iterations before it: the checkpoint of that
    iteration is on disk, so a resume continues after it."""
    comp = toy_components()

    def failing_export(state, cfg, out):
        raise RuntimeError("evaluation failed")

    comp.export_teacher = failing_export
    cfg = toy_cfg(tmp_path, **{"train.checkpoint_period": 3, "evaluation.eval_period_iterations": 6})
    with pytest.raises(RuntimeError, match="evaluation failed"):
        run(cfg, comp)
    assert restore_w(tmp_path)[0] == 6  # iteration 5's checkpoint was written before its evaluation


def test_resume_with_other_num_workers_says_what_to_do(tmp_path):
    run(toy_cfg(tmp_path, **{"train.max_iterations": 5, "train.num_workers": 2}))
    with pytest.raises(ValueError, match=r"train.num_workers is 3 but checkpoint .*ckpt/5 was written with 2.*"
                                         r"--config.train.num_workers=2"):
        run(toy_cfg(tmp_path, **{"train.num_workers": 3}))


def test_second_run_in_same_output_dir_refuses(tmp_path):
    lock = tmp_path / LOCK_NAME
    # a live owner: this test process (any running pid on this host)
    import socket

    import time

    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid(), "started": "x",
                                "updated": time.time()}))
    with pytest.raises(OutputDirInUseError, match=f"process {os.getppid()} on host"):
        run(toy_cfg(tmp_path, **{"train.max_iterations": 2}))
    assert not (tmp_path / "ckpt").exists()
    # another host's lock, refreshed recently: refused; not refreshed for > 10 min: taken over
    lock.write_text(json.dumps({"host": "elsewhere", "pid": 7, "started": "x", "updated": time.time() - 60}))
    with pytest.raises(OutputDirInUseError, match="process 7 on host elsewhere"):
        run(toy_cfg(tmp_path, **{"train.max_iterations": 2}))
    lock.write_text(json.dumps({"host": "elsewhere", "pid": 7, "started": "x", "updated": time.time() - 3600}))
    log = io.StringIO()
    res = trainer.train(toy_cfg(tmp_path, **{"train.max_iterations": 1}), toy_components(), use_mesh=False,
                        stream=log)
    assert sorted(res.losses) == [0] and "not refreshed for" in log.getvalue()
    shutil.rmtree(tmp_path / "ckpt")
    # a stale lock: its process is gone -> taken over with a warning
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "started": "x"}))
    log = io.StringIO()
    res = trainer.train(toy_cfg(tmp_path, **{"train.max_iterations": 2}), toy_components(), use_mesh=False,
                        stream=log)
    assert sorted(res.losses) == [0, 1]
    assert f"taking over the lock" in log.getvalue() and str(dead.pid) in log.getvalue()
    assert not lock.exists()  # released at the end


def test_sigint_saves_once_like_sigterm(tmp_path):
    class Interrupt(ToyLoader):
        def __next__(self):
            if self.pos == 3:
                os.kill(os.getpid(), signal.SIGINT)
            return super().__next__()

    comp = toy_components()
    comp.make_train_loader = lambda cfg, seed: Interrupt(seed)
    res = run(toy_cfg(tmp_path), comp)
    assert res.stopped_by_signal and sorted(res.losses) == [0, 1, 2, 3]
    assert restore_w(tmp_path)[0] == 4
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_second_sigint_exits_at_once(tmp_path):
    code = ("import os, signal, time\n"
            "from dinov2_jax.train.stop_agreement import StopSignals\n"
            "s = StopSignals().install()\n"
            "os.kill(os.getpid(), signal.SIGINT)\n"
            "time.sleep(0.2)\n"
            "assert s.signum == signal.SIGINT\n"
            "os.kill(os.getpid(), signal.SIGINT)\n"
            "time.sleep(5)\n"
            "print('NOT EXITED')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 130, r.stdout + r.stderr
    assert "Second SIGINT" in r.stderr and "NOT EXITED" not in r.stdout


def test_torn_last_metrics_line_is_dropped_not_merged(tmp_path):
    run(toy_cfg(tmp_path, **{"train.max_iterations": 4}))
    path = tmp_path / "training_metrics.json"
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"iteration": 4, "total_lo')  # killed mid-write
    log = io.StringIO()
    trainer.train(toy_cfg(tmp_path, **{"train.max_iterations": 6}), toy_components(), use_mesh=False, stream=log)
    assert "cut-off last line" in log.getvalue()
    records = [json.loads(line) for line in path.read_text().splitlines()]  # every line parses
    assert [r["iteration"] for r in records] == [0, 1, 3, 4, 5]
    assert path.read_bytes().startswith(whole)


def test_disk_full_gives_one_clear_error(tmp_path):
    """A 300 KB file system fills after a few checkpoints: the run ends with DiskFullError and a handful
    of lines, not Orbax's tracebacks. Needs root to mount a tmpfs (skipped otherwise, with the reason)."""
    small = tmp_path / "small"
    small.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs (mount -t tmpfs -o size=300k)")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(small)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        code = ("import sys\n"
                f"sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
                "from test_trainer import toy_cfg, toy_components\n"
                "from dinov2_jax.train import trainer\n"
                "from dinov2_jax.train.disk_full import DiskFullError\n"
                f"cfg = toy_cfg({str(small / 'run')!r}, **{{'train.checkpoint_period': 1, 'train.max_to_keep': 100,"
                " 'optim.epochs': 30})\n"
                "try:\n"
                "    trainer.train(cfg, toy_components(), use_mesh=False)\n"
                "except DiskFullError as e:\n"
                "    print('DISK FULL:', e.strerror)\n"
                "    sys.exit(3)\n")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    finally:
        subprocess.run(["umount", str(small)])
    out = r.stdout + r.stderr
    assert r.returncode == 3, out[-3000:]
    assert "DISK FULL: no space left on device while writing to" in out and "run the same command" in out
    assert "Traceback" not in out and "Event loop is closed" not in out, out[-3000:]
    assert out.count("no space left on device while writing the run's files") == 1
    assert len(out.splitlines()) < 30, out


def test_disk_full_aftermath_at_exit_is_dropped_until_the_process_ends():
    """After a full disk, Orbax's loops torn down at interpreter exit raise "Event loop is closed" through
    sys.unraisablehook / threading.excepthook (seen under load as a stray traceback after the one-line error):
    the guard drops them even after the trainer's `remove()`, and passes every other error on."""
    import io
    import threading
    import types

    from dinov2_jax.train.disk_full import DiskFullGuard

    old_unraisable, old_thread = sys.unraisablehook, threading.excepthook
    passed = []
    sys.unraisablehook = lambda args: passed.append(args.exc_value)
    threading.excepthook = lambda args: passed.append(args.exc_value)
    try:
        clean = DiskFullGuard(io.StringIO()).install()
        closed = types.SimpleNamespace(exc_value=RuntimeError("Event loop is closed"))
        sys.unraisablehook(closed)  # no full disk seen: not ours to hide
        clean.remove()
        assert sys.unraisablehook is not clean._unraisablehook and len(passed) == 1

        stream = io.StringIO()
        guard = DiskFullGuard(stream).install()
        threading.excepthook(types.SimpleNamespace(exc_value=OSError(28, "No space left on device")))
        guard.remove()  # the trainer's finally: the hooks stay, the aftermath is still to come
        sys.unraisablehook(closed)
        threading.excepthook(closed)
        other = types.SimpleNamespace(exc_value=ValueError("something else"))
        sys.unraisablehook(other)
        assert passed[1:] == [other.exc_value]
        assert stream.getvalue().count("no space left on device") == 1
    finally:
        sys.unraisablehook, threading.excepthook = old_unraisable, old_thread


def test_skipped_image_count_in_metrics_and_progress_line(tmp_path):
    class Gappy(ToyLoader):
        """Batch i holds stream positions 8i..8i+7, but positions 10 and 21 were unreadable (dropped)."""

        def __next__(self):
            b = super().__next__()
            good = [g for g in range(100) if g not in (10, 21)]
            b["sample_index"] = np.asarray(good[8 * (self.pos - 1):8 * self.pos])
            return b

    comp = toy_components()
    comp.make_train_loader = lambda cfg, seed: Gappy(seed)
    log = io.StringIO()
    trainer.train(toy_cfg(tmp_path, **{"train.max_iterations": 4, "train.num_workers": 0, "train.log_period": 1}),
                  comp, use_mesh=False, stream=log)
    records = [json.loads(line) for line in open(tmp_path / "training_metrics.json")]
    assert [r["skipped_images"] for r in records] == [0, 1, 2, 2]
    lines = [ln for ln in log.getvalue().splitlines() if ln.startswith("Training")]
    assert "skipped_images" not in lines[0] and lines[-1].endswith("skipped_images: 2")


def test_cli_config_error_is_one_line_exit_2(tmp_path):
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    r = subprocess.run([sys.executable, "-m", "dinov2_jax.train", "--config", "configs/quickstart.py",
                        f"--config.train.output_dir={tmp_path}", "--config.train.log_period=0"],
                       capture_output=True, text=True, timeout=300, cwd=root)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: train.log_period=0: must be an integer >= 1")
    assert "Traceback" not in r.stderr


def test_cli_missing_eval_folder_fails_before_training(tmp_path):
    """The real quickstart config with a missing k-NN val folder: exit 2 naming the key, before any
    iteration or checkpoint (before: the run died at its first evaluation, and every resume there)."""
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    r = subprocess.run([sys.executable, "-m", "dinov2_jax.train", "--config", "configs/quickstart.py",
                        f"--config.train.output_dir={tmp_path}",
                        "--config.evaluation.evaluators.knn.val_dataset=folder:/no/val"],
                       capture_output=True, text=True, timeout=600, cwd=root)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert "evaluation.evaluators.knn.val_dataset='folder:/no/val'" in r.stderr and "Traceback" not in r.stderr
    assert "Training [" not in r.stdout and not (tmp_path / "ckpt").exists()
