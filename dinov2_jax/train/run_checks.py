"""Checks a training run makes before its first step, and the output-directory lock.

Everything that can be checked at start is checked at start, so a run never dies hours in (or, worse,
at the same point on every resume) on a bad number or a missing evaluation folder:

* `check_config_values`: sizes and periods that must be positive, before any of them is used;
* `check_eval_inputs`: every `evaluation.*_dataset` an evaluation of this run will read exists and
  holds images;
* `check_resume_compatible`: the settings the saved data-iterator position depends on
  (`train.num_workers`, the per-device batch size) are unchanged;
* `RunLock`: `output_dir/.dinov2_run.lock` holds the owner's host and pid, so a second run started in
  the same directory refuses instead of overwriting the first run's checkpoints. The owner rewrites it
  every minute; a lock left by a process that no longer exists on this host, or not rewritten for
  `DINOV2_LOCK_STALE_S` seconds (default 600: a run killed on another host, e.g. a preempted job
  requeued elsewhere), is taken over with a warning.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from typing import Callable

LOCK_NAME = ".dinov2_run.lock"
LOCK_REFRESH_S = 60.0


class OutputDirInUseError(RuntimeError):
    """Another live run holds the output directory's lock."""


def check_config_values(cfg) -> None:
    """Clear errors for values that would otherwise fail late or obscurely (math domain error,
    ZeroDivisionError after compiling, a negative max_iterations running the full schedule)."""
    t = cfg.train
    checks = [
        ("train.batch_size_per_gpu", t.batch_size_per_gpu, 1, "images per device per step"),
        ("train.checkpoint_period", t.checkpoint_period, 1, "iterations between checkpoints"),
        ("train.log_period", t.log_period, 1, "iterations between log lines"),
        ("train.OFFICIAL_EPOCH_LENGTH", t.OFFICIAL_EPOCH_LENGTH, 1, "iterations per epoch"),
        ("optim.epochs", cfg.optim.epochs, 1, "epochs of the schedule"),
        ("train.max_to_keep", t.get("max_to_keep", 1), 1, "checkpoints kept"),
        ("evaluation.eval_period_iterations", cfg.evaluation.get("eval_period_iterations", 0), 0,
         "0 = no periodic evaluation"),
        ("train.num_workers", t.get("num_workers", 0), 0, "0 = decode in the main process"),
    ]
    for key, value, low, meaning in checks:
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{key}={value!r}: must be an integer >= {low} ({meaning}); "
                             f"pass --config.{key}=<value>")
    m = t.max_iterations
    if not isinstance(m, int) or isinstance(m, bool) or not (m == -1 or m >= 1):
        raise ValueError(f"train.max_iterations={m!r}: use -1 (the full schedule, epochs x OFFICIAL_EPOCH_LENGTH) "
                         f"or N >= 1 (stop after N iterations, schedules unchanged)")


def eval_datasets(cfg) -> dict[str, str]:
    """`{"evaluation.evaluators.<name>.<key>": spec}` of the datasets the evaluators of this run will read
    (only evaluators that will run: a period, the export period, or `at_start`)."""
    from dinov2_jax.eval.evaluators import evaluators_from_config

    period = cfg.evaluation.get("eval_period_iterations", 0)
    out = {}
    for name, opts in evaluators_from_config(cfg.evaluation).items():
        if not ((opts["period"] or period) > 0 or opts["at_start"]):
            continue
        for k, v in opts.items():
            if k.endswith("_dataset") and isinstance(v, str) and v:
                out[f"evaluation.evaluators.{name}.{k}"] = v
        for i, v in enumerate(opts.get("test_datasets", None) or ()):
            out[f"evaluation.evaluators.{name}.test_datasets[{i}]"] = v
    return out


def check_eval_inputs(cfg) -> None:
    """Opens every evaluation dataset (lists its files) so a bad path fails before the first step."""
    from dinov2_jax.data.sources import make_source

    for key, spec in eval_datasets(cfg).items():
        try:
            make_source(spec)
        except (FileNotFoundError, ValueError, OSError) as e:
            raise type(e)(f"{key}={spec!r}: {e}. The periodic evaluation reads it; fix the path or set "
                          f"--config.evaluation.eval_period_iterations=0") from None


# settings the saved data-iterator position depends on: (key path, what to say)
RESUME_KEYS = (("train.num_workers", "the position of each decoding worker is saved"),
               ("train.batch_size_per_gpu", "batches are cut from the saved position"))


def check_resume_compatible(saved: dict, cfg, checkpoint: str) -> None:
    """The saved data-iterator state only fits a run with the same data settings."""
    for key, why in RESUME_KEYS:
        a, b = saved, cfg
        try:
            for k in key.split("."):
                a = a[k]
                b = b[k]
        except (KeyError, TypeError):
            continue
        if a != b:
            raise ValueError(
                f"{key} is {b!r} but checkpoint {checkpoint} was written with {a!r} ({why}); resume with "
                f"--config.{key}={a!r}, or start a new run in another train.output_dir")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class RunLock:
    """`output_dir/.dinov2_run.lock` with {"host", "pid", "started"}; taken by process 0 of a run."""

    def __init__(self, output_dir: str, warn: Callable[[str], None]):
        from etils import epath

        self.path = epath.Path(output_dir) / LOCK_NAME
        self.warn = warn
        self.held = False
        self.me = {"host": socket.gethostname(), "pid": os.getpid()}
        self.stale_after = float(os.environ.get("DINOV2_LOCK_STALE_S", 600))
        self._started = time.strftime("%Y-%m-%d %H:%M:%S")
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None

    def _body(self) -> str:
        return json.dumps({**self.me, "started": self._started, "updated": time.time()})

    def _refresh_loop(self) -> None:
        while not self._stop.wait(LOCK_REFRESH_S):
            try:
                self.path.write_text(self._body())
            except OSError:
                pass  # e.g. disk full: the run reports that itself; the lock just ages

    def _hold(self) -> "RunLock":
        self.held = True
        self._refresher = threading.Thread(target=self._refresh_loop, daemon=True)
        self._refresher.start()
        return self

    def acquire(self) -> "RunLock":
        body = self._body()
        local = "://" not in os.fspath(self.path)
        for _ in range(2):
            if local:
                try:
                    fd = os.open(os.fspath(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    pass
                else:
                    with os.fdopen(fd, "w") as f:
                        f.write(body)
                    return self._hold()
            elif not self.path.exists():  # remote stores have no O_EXCL: best effort
                self.path.write_text(body)
                return self._hold()
            self._take_over_if_stale()
        raise OutputDirInUseError(f"could not take the lock {self.path}")

    def _take_over_if_stale(self) -> None:
        try:
            owner = json.loads(self.path.read_text())
        except (OSError, ValueError):
            owner = {}
        host, pid = owner.get("host"), owner.get("pid")
        age = time.time() - float(owner.get("updated", 0) or 0)
        if host == self.me["host"] and isinstance(pid, int) and not _pid_alive(pid):
            why = "which no longer exists (that run was killed)"
        elif age > self.stale_after:
            why = f"not refreshed for {age:.0f} s > DINOV2_LOCK_STALE_S={self.stale_after:.0f} (that run is dead)"
        else:
            raise OutputDirInUseError(
                f"train.output_dir is in use by another run (process {pid} on host {host}, started "
                f"{owner.get('started', '?')}, lock refreshed {age:.0f} s ago; lock file {self.path}). Two runs in "
                f"one directory would overwrite each other's checkpoints: use another train.output_dir, or if that "
                f"run is dead, delete the lock file (or wait: a lock not refreshed for {self.stale_after:.0f} s is "
                f"taken over)")
        self.warn(f"WARNING: taking over the lock {self.path} of process {pid} on {host}, {why}")
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        if not self.held:
            return
        self._stop.set()
        if self._refresher is not None:
            self._refresher.join()
        try:
            owner = json.loads(self.path.read_text())
            if owner.get("host") == self.me["host"] and owner.get("pid") == self.me["pid"]:
                self.path.unlink(missing_ok=True)
        except (OSError, ValueError):
            pass
        self.held = False
