"""Multi-process (multi-host) start-up: `jax.distributed.initialize` from the environment.

Call `initialize_from_env()` once, first thing in a program, before anything touches a JAX device.
Which launcher started us is decided from environment variables (`plan_from_env`, a pure function):

1. `DINOV2_DISTRIBUTED` forces a method: `none` | `explicit` | `slurm` | `tpu` | `auto`
   (`auto` = JAX's own cluster auto-detection: SLURM, Cloud TPU, Open MPI, Kubernetes).
2. Otherwise, in this order:
   - explicit coordinator: `DINOV2_COORDINATOR` (host:port), `DINOV2_NUM_PROCESSES`, `DINOV2_PROCESS_ID`,
     or the `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID` equivalents
     (`DINOV2_LOCAL_DEVICE_IDS=0,1` optionally restricts this process's devices);
   - SLURM with more than one task (`SLURM_NTASKS > 1`, `SLURM_PROCID`, `SLURM_STEP_NODELIST`/`SLURM_JOB_NODELIST`):
     coordinator = first node of the step, port derived from the job id (or `DINOV2_COORDINATOR_PORT`);
     with several tasks per node each task gets the device `SLURM_LOCALID` (one process per GPU);
   - Cloud TPU pod (`TPU_WORKER_HOSTNAMES` lists more than one host, or `MEGASCALE_COORDINATOR_ADDRESS`):
     no-argument `jax.distributed.initialize()`, which reads the TPU metadata;
   - nothing: a single process (no initialize call).

`DINOV2_HEARTBEAT_TIMEOUT_S` (default: JAX's, 100 s) bounds how long the other processes live on after
one dies: the coordination service then aborts them ("tasks are unhealthy (stopped sending heartbeats)").

The chosen plan is logged on every process.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Mapping

import jax

log = logging.getLogger(__name__)

METHODS = ("none", "explicit", "slurm", "tpu", "auto")


@dataclasses.dataclass(frozen=True)
class DistributedPlan:
    """What `initialize_from_env` does. `method` is one of METHODS; None fields are left to JAX."""

    method: str
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None

    def initialize_kwargs(self) -> dict:
        kw = {}
        if self.coordinator_address is not None:
            kw["coordinator_address"] = self.coordinator_address
        if self.num_processes is not None:
            kw["num_processes"] = self.num_processes
        if self.process_id is not None:
            kw["process_id"] = self.process_id
        if self.local_device_ids is not None:
            kw["local_device_ids"] = list(self.local_device_ids)
        return kw


def slurm_first_host(nodelist: str) -> str:
    """First hostname of a SLURM node list: 'gpu[003-005,9],cpu1' -> 'gpu003'; 'a,b' -> 'a'."""
    nodelist = nodelist.strip()
    if not nodelist:
        raise ValueError("empty SLURM node list")
    m = re.match(r"^([^,\[]+)(\[([^\]]+)\])?", nodelist)
    if m is None:
        raise ValueError(f"cannot parse SLURM node list {nodelist!r}")
    prefix, _, ranges = m.groups()
    if ranges is None:
        return prefix
    first = re.split(r"[,-]", ranges)[0]
    return prefix + first


def _first(env: Mapping[str, str], *names: str) -> str | None:
    for n in names:
        v = env.get(n)
        if v not in (None, ""):
            return v
    return None


def _int(env: Mapping[str, str], value: str | None, what: str) -> int:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be an integer, got {value!r}") from None


def _explicit_plan(env: Mapping[str, str]) -> DistributedPlan:
    coord = _first(env, "DINOV2_COORDINATOR", "JAX_COORDINATOR_ADDRESS")
    nproc = _first(env, "DINOV2_NUM_PROCESSES", "JAX_NUM_PROCESSES")
    pid = _first(env, "DINOV2_PROCESS_ID", "JAX_PROCESS_ID")
    missing = [n for n, v in (("DINOV2_COORDINATOR", coord), ("DINOV2_NUM_PROCESSES", nproc),
                              ("DINOV2_PROCESS_ID", pid)) if v is None]
    if missing:
        raise ValueError(
            f"explicit multi-process start needs DINOV2_COORDINATOR (host:port), DINOV2_NUM_PROCESSES and "
            f"DINOV2_PROCESS_ID (or JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID); missing: {missing}"
        )
    if ":" not in coord:  # type: ignore[operator]
        raise ValueError(f"DINOV2_COORDINATOR={coord!r} must be host:port, e.g. 10.0.0.1:12355")
    n, p = _int(env, nproc, "DINOV2_NUM_PROCESSES"), _int(env, pid, "DINOV2_PROCESS_ID")
    if not 0 <= p < n:
        raise ValueError(f"DINOV2_PROCESS_ID={p} must be in [0, DINOV2_NUM_PROCESSES={n})")
    ids = env.get("DINOV2_LOCAL_DEVICE_IDS")
    local = tuple(int(x) for x in ids.split(",")) if ids else None
    return DistributedPlan("explicit", coord, n, p, local)


def _slurm_plan(env: Mapping[str, str]) -> DistributedPlan:
    need = ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_PROCID")
    missing = [n for n in need if n not in env]
    nodelist = _first(env, "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST")
    if missing or nodelist is None:
        raise ValueError(
            f"SLURM start needs {need} and SLURM_STEP_NODELIST/SLURM_JOB_NODELIST (run the program with srun); "
            f"missing: {missing + ([] if nodelist else ['SLURM_STEP_NODELIST'])}"
        )
    port = env.get("DINOV2_COORDINATOR_PORT") or str(61440 + int(env["SLURM_JOB_ID"]) % 4096)
    coord = f"{slurm_first_host(nodelist)}:{port}"
    ntasks = int(env["SLURM_NTASKS"])
    nnodes = int(_first(env, "SLURM_STEP_NUM_NODES", "SLURM_JOB_NUM_NODES", "SLURM_NNODES") or 1)
    local = None
    if ntasks > nnodes and "SLURM_LOCALID" in env:  # several tasks per node: one device per task
        local = (int(env["SLURM_LOCALID"]),)
    return DistributedPlan("slurm", coord, ntasks, int(env["SLURM_PROCID"]), local)


def plan_from_env(env: Mapping[str, str] | None = None) -> DistributedPlan:
    """Decide how to start (see module docstring). Pure: reads only `env` (default os.environ)."""
    env = os.environ if env is None else env
    forced = env.get("DINOV2_DISTRIBUTED", "").strip().lower()
    if forced and forced not in METHODS:
        raise ValueError(f"DINOV2_DISTRIBUTED={forced!r}; use one of {METHODS}")
    if forced == "none":
        return DistributedPlan("none")
    if forced == "explicit":
        return _explicit_plan(env)
    if forced == "slurm":
        return _slurm_plan(env)
    if forced in ("tpu", "auto"):
        return DistributedPlan(forced)
    if _first(env, "DINOV2_COORDINATOR", "JAX_COORDINATOR_ADDRESS") is not None:
        return _explicit_plan(env)
    if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return _slurm_plan(env)
    workers = env.get("TPU_WORKER_HOSTNAMES", "")
    if len([w for w in workers.split(",") if w.strip()]) > 1 or "MEGASCALE_COORDINATOR_ADDRESS" in env:
        return DistributedPlan("tpu")
    return DistributedPlan("none")


def initialize_from_env(env: Mapping[str, str] | None = None) -> DistributedPlan:
    """Run `jax.distributed.initialize` as `plan_from_env` says; returns the plan. Idempotent."""
    plan = plan_from_env(env)
    if plan.method == "none":
        log.info("distributed: single process (no launcher environment found)")
        return plan
    if jax.distributed.is_initialized():
        log.info("distributed: already initialized (process %d of %d)", jax.process_index(), jax.process_count())
        return plan
    kw = plan.initialize_kwargs()
    env = os.environ if env is None else env
    if env.get("DINOV2_HEARTBEAT_TIMEOUT_S"):
        kw["heartbeat_timeout_seconds"] = _int(env, env["DINOV2_HEARTBEAT_TIMEOUT_S"], "DINOV2_HEARTBEAT_TIMEOUT_S")
    log.info("distributed: method=%s initialize(%s)", plan.method, kw)
    jax.distributed.initialize(**kw)
    log.info(
        "distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(),
    )
    return plan
