"""Stopping multi-process runs (dinov2_jax/train/stop_agreement.py, launch/local_multiprocess.py).

The heavy tests start 2 real trainer processes (python -m dinov2_jax.train, the launcher's environment,
1 CPU device each) directly, so that each one can be signalled or killed on its own.
"""
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_distributed import TINY_TRAIN

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "launch"))
from local_multiprocess import free_port  # noqa: E402


def test_launcher_forwards_sigterm_and_waits():
    """SIGTERM to the launcher reaches every child; the launcher waits for them and returns their code."""
    code = ("import os, signal, sys, time\n"
            "got = []\n"
            "signal.signal(signal.SIGTERM, lambda s, f: got.append(s))\n"
            "print('READY', flush=True)\n"
            "t = time.time()\n"
            "while not got and time.time() - t < 60: time.sleep(0.05)\n"
            "time.sleep(1.0)  # a save takes a while: the launcher must not kill us meanwhile\n"
            "print('GOT', got, flush=True)\n"
            "sys.exit(0 if got else 5)\n")
    p = subprocess.Popen([sys.executable, str(ROOT / "launch" / "local_multiprocess.py"), "-n", "2", "--", "-c", code],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    lines = []
    t = threading.Thread(target=lambda: lines.extend(iter(p.stdout.readline, "")), daemon=True)
    t.start()
    deadline = time.time() + 60
    while sum("READY" in ln for ln in lines) < 2 and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    rc = p.wait(timeout=60)
    t.join(timeout=5)
    out = "".join(lines)
    assert rc == 0, out
    assert out.count("GOT [15]") == 2, out


class Run:
    """N trainer processes with the launcher's environment; output collected per process."""

    def __init__(self, out_dir, n=2, extra=(), heartbeat_s=10):
        port = free_port()
        self.lines = [[] for _ in range(n)]
        self.procs = []
        for i in range(n):
            env = dict(os.environ, DINOV2_COORDINATOR=f"127.0.0.1:{port}", DINOV2_NUM_PROCESSES=str(n),
                       DINOV2_PROCESS_ID=str(i), DINOV2_HEARTBEAT_TIMEOUT_S=str(heartbeat_s), JAX_PLATFORMS="cpu",
                       PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
            env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
            p = subprocess.Popen([sys.executable, "-m", "dinov2_jax.train", *TINY_TRAIN,
                                  f"--config.train.output_dir={out_dir}", *extra], env=env, cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            threading.Thread(target=lambda p=p, i=i: self.lines[i].extend(iter(p.stdout.readline, "")),
                             daemon=True).start()
            self.procs.append(p)

    def text(self, i):
        return "".join(self.lines[i])

    def iteration(self, i):
        """Last iteration logged by process i (-1 before the first log line)."""
        done = re.findall(r"\] \[(\d+)/\d+\]", self.text(i))
        return int(done[-1]) - 1 if done else -1

    def wait_until(self, cond, timeout):
        deadline = time.time() + timeout
        while not cond():
            if time.time() > deadline:
                self.kill()
                raise AssertionError("timed out:\n" + "\n".join(self.text(i)[-3000:] for i in range(len(self.procs))))
            if any(p.poll() not in (None, 0) for p in self.procs):
                break
            time.sleep(0.1)

    def kill(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()


LONG = ["--config.train.OFFICIAL_EPOCH_LENGTH=200", "--config.train.checkpoint_period=1000"]


@pytest.mark.heavy
def test_staggered_sigterm_two_processes_save_together_and_exit_0(tmp_path):
    """SIGTERM to process 1, 1.5 s later to process 0: both stop after the same iteration, save one
    checkpoint together and exit 0 (before: both hung in the save forever)."""
    out = tmp_path / "run"
    run = Run(out, extra=LONG)
    run.wait_until(lambda: min(run.iteration(0), run.iteration(1)) >= 3, timeout=600)
    t0 = time.time()
    run.procs[1].send_signal(signal.SIGTERM)
    time.sleep(1.5)
    run.procs[0].send_signal(signal.SIGTERM)
    try:
        rcs = [p.wait(timeout=120) for p in run.procs]
    except subprocess.TimeoutExpired:
        run.kill()
        raise AssertionError("a process did not exit within 120 s of the SIGTERM:\n" + run.text(0)[-3000:]
                             + run.text(1)[-3000:])
    elapsed = time.time() - t0
    assert rcs == [0, 0], run.text(0)[-3000:] + run.text(1)[-3000:]
    saved = [re.findall(r"saved checkpoint \S+/ckpt/(\d+); exiting", run.text(i)) for i in range(2)]
    assert saved[0] and saved[0] == saved[1], saved  # the same iteration on both processes
    assert "a stop signal of another process" in run.text(0) or "signal 15" in run.text(0)
    step = int(saved[0][0])
    assert sorted(os.listdir(out / "ckpt")) == [str(step)]
    from dinov2_jax.train.checkpoint import verify_checksums

    assert verify_checksums(out / "ckpt" / str(step)) is None
    print(f"stopped after iteration {step - 1}; both processes exited {elapsed:.1f} s after the first SIGTERM")
    assert elapsed < 120


@pytest.mark.heavy
def test_dead_peer_makes_survivor_exit_nonzero(tmp_path):
    """SIGKILL process 1 mid-run: process 0 exits with a non-zero code within a bound (heartbeat
    timeout 10 s here) instead of waiting forever in the next collective."""
    run = Run(tmp_path / "run", extra=LONG, heartbeat_s=10)
    run.wait_until(lambda: min(run.iteration(0), run.iteration(1)) >= 3, timeout=600)
    t0 = time.time()
    run.procs[1].kill()
    try:
        rc = run.procs[0].wait(timeout=90)
    except subprocess.TimeoutExpired:
        run.kill()
        raise AssertionError("the survivor still runs 90 s after its peer died:\n" + run.text(0)[-3000:])
    elapsed = time.time() - t0
    text = run.text(0)
    assert rc != 0, text[-3000:]
    assert ("stopped sending heartbeats" in text or "Connection reset by peer" in text
            or "Connection closed by peer" in text), text[-3000:]
    print(f"survivor exited with {rc} after {elapsed:.1f} s")


@pytest.mark.heavy
def test_two_process_resume_skips_damaged_newest_checkpoint(tmp_path):
    """2 processes: the newest checkpoint's array file is truncated; both processes agree to set it aside
    and resume from the previous one, with the losses of a straight run."""
    from test_distributed import _losses, _train_2proc

    straight, damaged = tmp_path / "straight", tmp_path / "damaged"
    _train_2proc(straight, 8)
    _train_2proc(damaged, 6)
    assert sorted(os.listdir(damaged / "ckpt")) == ["3", "6"]
    files = [os.path.join(d, f) for d, _, fs in os.walk(damaged / "ckpt" / "6" / "state") for f in fs
             if os.sep + "d" + os.sep in os.path.join(d, f)]
    big = max(files, key=os.path.getsize)
    with open(big, "r+b") as f:
        f.truncate(os.path.getsize(big) // 2)
    log = _train_2proc(damaged, 8)
    assert log.count("/ckpt/6 is damaged") == 2, log[-4000:]  # both processes say so
    assert "Resuming from" in log and "/ckpt/3 (iteration 3)" in log
    a, b = _losses(straight), _losses(damaged)
    for it in range(3, 8):
        assert abs(a[it] - b[it]) <= 1e-6 * abs(a[it]), (it, a[it], b[it])


def test_terminal_ctrl_c_reaches_each_child_once():
    """Ctrl-C in a terminal signals the launcher's whole process group; the children (own sessions) get
    it once, forwarded, not twice (a second SIGINT makes the trainer exit without saving)."""
    code = ("import signal, sys, time\n"
            "got = []\n"
            "signal.signal(signal.SIGINT, lambda s, f: got.append(s))\n"
            "print('READY', flush=True)\n"
            "t = time.time()\n"
            "while not got and time.time() - t < 60: time.sleep(0.05)\n"
            "time.sleep(1.0)\n"
            "print('GOT', got, flush=True)\n")
    p = subprocess.Popen([sys.executable, str(ROOT / "launch" / "local_multiprocess.py"), "-n", "2", "--", "-c", code],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, start_new_session=True)
    lines = []
    t = threading.Thread(target=lambda: lines.extend(iter(p.stdout.readline, "")), daemon=True)
    t.start()
    deadline = time.time() + 60
    while sum("READY" in ln for ln in lines) < 2 and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGINT)  # what the terminal does
    rc = p.wait(timeout=60)
    t.join(timeout=5)
    out = "".join(lines)
    assert rc == 0 and out.count("GOT [2]") == 2, out
