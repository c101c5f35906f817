"""Stopping a run on a signal, in step across processes.

`StopSignals` turns SIGTERM and the first SIGINT (Ctrl-C) into a stop request: the loop finishes the
current iteration, saves a checkpoint and returns. A SIGINT after that exits at once (exit code 130, no
save), for when the save itself is not wanted or hangs.

With several processes each one receives its signal at its own moment (a scheduler may signal them
seconds apart, or only one of them). A checkpoint save is a collective, so if each process acted on its
own flag they would enter the save at different iterations and wait for each other forever.
`StepAgreement.poll` combines every process's flag (and its count of skipped images) once per
iteration, so all processes stop after the same iteration and save together. It is a reduction of two
int32 per device, read one iteration late so that the host never waits on the train step for it
(`benchmarks/stop_agreement_cost.py`).

A process that dies (kill -9, out of memory, lost host) stops sending heartbeats to the JAX coordination
service; after `heartbeat_timeout_seconds` (`DINOV2_HEARTBEAT_TIMEOUT_S`, see
`dinov2_jax/parallel/distributed.py`) the service aborts the other processes with "The following tasks
are unhealthy (stopped sending heartbeats)", and a collective with the dead peer fails with "Connection
reset by peer" even sooner, so the survivors exit non-zero instead of hanging.
"""
from __future__ import annotations

import os
import signal
import sys
import threading

import jax
import numpy as np


class StopSignals:
    """Records the first SIGTERM / SIGINT; the loop reads `signum` (None: keep going)."""

    def __init__(self, stream=None):
        self.signum: int | None = None
        self._old = {}
        self._stream = stream

    def install(self) -> "StopSignals":
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be set from the main thread
        for s in (signal.SIGTERM, signal.SIGINT):
            self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.signum is not None:  # Ctrl-C while already stopping
            print("Second SIGINT: exiting now without saving (the previous checkpoint is kept).",
                  file=sys.stderr, flush=True)
            os._exit(130)
        if self.signum is None:
            self.signum = signum
            name = signal.Signals(signum).name
            extra = " (press Ctrl-C again to exit without saving)" if signum == signal.SIGINT else ""
            print(f"{name} received: finishing this iteration, saving a checkpoint and exiting{extra}.",
                  file=self._stream or sys.stderr, flush=True)

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}


class StepAgreement:
    """Per-iteration agreement of all processes: stop or not, and the total of a per-process counter.

    `poll` is a tiny jitted reduction over every device. It is read one iteration late, so it never
    makes the host wait for the train step just dispatched (the reduction is queued behind it on the
    device): the value returned at iteration `it` combines what every process passed at `it - 1`.
    Every process therefore gets the same answer at the same iteration."""

    def __init__(self):
        self.multi = jax.process_count() > 1
        self._pending = None
        if self.multi:
            import jax.numpy as jnp
            from jax.sharding import Mesh, NamedSharding, PartitionSpec

            mesh = Mesh(np.asarray(jax.devices()), ("all",))
            self._rows = NamedSharding(mesh, PartitionSpec("all"))
            # one row per device; only the first local device's row carries this process's values
            self._reduce = jax.jit(lambda x: jnp.stack([jnp.max(x[:, 0]), jnp.sum(x[:, 1])]),
                                   out_shardings=NamedSharding(mesh, PartitionSpec()))

    def _dispatch(self, values: list[int]):
        local = np.zeros((jax.local_device_count(), 2), np.int32)
        local[0] = values
        glob = jax.make_array_from_process_local_data(self._rows, local)
        return self._reduce(glob)

    @staticmethod
    def _read(result) -> tuple[bool, int]:
        got = np.asarray(result.addressable_data(0))
        return bool(got[0]), int(got[1])

    def poll(self, stop_requested: bool, count: int = 0) -> tuple[bool, int]:
        """(some process asked to stop, sum of `count` over processes), as of the previous call (see the
        class doc; (False, count) at the first call). With several processes a collective: every process
        calls it once per iteration. One process: this call's values, at once."""
        if not self.multi:
            return stop_requested, int(count)
        previous, self._pending = self._pending, self._dispatch([int(stop_requested), int(count)])
        if previous is None:
            return False, int(count)
        return self._read(previous)

    def all_true(self, ok: bool) -> bool:
        """True iff `ok` on every process (a blocking collective with several processes)."""
        if not self.multi:
            return bool(ok)
        from jax.experimental import multihost_utils

        got = np.asarray(multihost_utils.process_allgather(np.array([int(bool(ok))], np.int32)))
        return bool(got.all())
