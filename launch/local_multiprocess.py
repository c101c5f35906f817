#!/usr/bin/env python
"""Start N cooperating JAX processes on this machine (coordinator on localhost), for testing multi-host code.

    python launch/local_multiprocess.py --num-processes 2 [--devices-per-process 2] -- \
        -m dinov2_jax.train --config configs/ssl_default.py --config.train.dataset_path=demo

Everything after `--` is the argument list of `python` in each process. Each child gets
`DINOV2_COORDINATOR=127.0.0.1:PORT`, `DINOV2_NUM_PROCESSES=N`, `DINOV2_PROCESS_ID=i`, which
`dinov2_jax.parallel.distributed.initialize_from_env()` reads. On CPU (default `--platform cpu`) each
process gets `--devices-per-process` simulated devices. Output lines are prefixed with `[i]`. If one
process fails the others are terminated and the exit code is the first non-zero one.
SIGTERM and SIGINT sent to the launcher are forwarded to every child (the trainer then saves a
checkpoint in all processes and exits 0); the launcher waits for them to finish.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time


def free_port() -> int:
    """A TCP port that is free right now on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pump(stream, prefix: str, out) -> None:
    for line in iter(stream.readline, b""):
        out.write(prefix + line.decode(errors="replace"))
        out.flush()
    stream.close()


def launch(python_args: list[str], num_processes: int, *, port: int | None = None, platform: str = "cpu",
           devices_per_process: int = 1, timeout: float | None = None, extra_env: dict | None = None) -> int:
    """Run `python *python_args` in `num_processes` processes; returns the exit code (0 if all succeed)."""
    if num_processes < 1:
        raise ValueError(f"--num-processes must be >= 1, got {num_processes}")
    port = port or free_port()
    procs, pumps = [], []
    for i in range(num_processes):
        env = dict(os.environ)
        env.update(extra_env or {})
        env.update(DINOV2_COORDINATOR=f"127.0.0.1:{port}", DINOV2_NUM_PROCESSES=str(num_processes),
                   DINOV2_PROCESS_ID=str(i))
        if platform:
            env["JAX_PLATFORMS"] = platform
        if platform == "cpu":
            flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
            env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices_per_process}"])
        # own session: a Ctrl-C in the terminal reaches the children once, through `forward` below (the
        # terminal's SIGINT to the whole process group plus the forwarded one would count as a second
        # Ctrl-C, which makes the trainer exit without saving)
        p = subprocess.Popen([sys.executable, *python_args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
        t = threading.Thread(target=_pump, args=(p.stdout, f"[{i}] ", sys.stdout), daemon=True)
        t.start()
        procs.append(p)
        pumps.append(t)
    deadline = None if timeout is None else time.monotonic() + timeout
    rc = 0

    def forward(signum, frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    old_handlers = {}
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGTERM, signal.SIGINT):
            old_handlers[s] = signal.signal(s, forward)
    try:
        while True:
            codes = [p.poll() for p in procs]  # poll every process (any() would stop at the first)
            if all(c is not None for c in codes):
                break
            failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
            if failed or (deadline is not None and time.monotonic() > deadline):
                rc = failed[0] if failed else 124
                if not failed:
                    print(f"local_multiprocess: timeout after {timeout} s", file=sys.stderr)
                break
            time.sleep(0.1)
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
        for p in procs:  # only the processes started here
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for t in pumps:
            t.join(timeout=5)
    if rc == 0:
        rc = next((p.returncode for p in procs if p.returncode != 0), 0)
    return rc


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        print("usage: local_multiprocess.py [options] -- PYTHON_ARGS...", file=sys.stderr)
        return 2
    cut = argv.index("--")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-processes", "-n", type=int, default=2)
    ap.add_argument("--port", type=int, default=None, help="coordinator port (default: a free one)")
    ap.add_argument("--platform", default="cpu", help="JAX_PLATFORMS for the children ('' = leave unset)")
    ap.add_argument("--devices-per-process", type=int, default=1, help="simulated CPU devices per process")
    ap.add_argument("--timeout", type=float, default=None, help="seconds before all processes are stopped")
    a = ap.parse_args(argv[:cut])
    return launch(argv[cut + 1:], a.num_processes, port=a.port, platform=a.platform,
                  devices_per_process=a.devices_per_process, timeout=a.timeout)


if __name__ == "__main__":
    sys.exit(main())
