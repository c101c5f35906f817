"""The DINOv2 training loop: mesh, data, state, jitted step, schedules, logs, checkpoints, eval.

`train(cfg)` runs (or resumes) a whole run in `cfg.train.output_dir`:

* iterations `it = start .. last`, where a full run has `last = optim.epochs * OFFICIAL_EPOCH_LENGTH`
  (official quirk: the loop also runs `it == max_iter`, with the schedules' final values) and
  `train.max_iterations > 0` stops after `max_iterations` iterations (schedules unchanged);
* hyper-parameters of iteration `it` are `hparams_at(schedules, it)` (host floats -> f32 scalars, so
  the step compiles once);
* every `train.checkpoint_period` iterations, at the end and on SIGTERM / a first SIGINT: an Orbax
  checkpoint `ckpt/<it+1>` with the train state, the data-iterator state and the merged config (with
  several processes, all agree on the iteration to stop after: `dinov2_jax.train.stop_agreement`);
* a restart with the same `output_dir` restores the newest checkpoint that passes its checks
  (checksums, structure, finite values; a damaged one is set aside with a warning) and continues
  exactly (same batches, same random keys, same losses);
* every input is checked before the first step (`dinov2_jax.train.run_checks`), and the output
  directory is locked against a second run;
* every `evaluation.eval_period_iterations` (after that iteration's checkpoint, if any): the teacher is
  exported to `eval/training_<it>/` in the converter's format;
* each evaluator of `evaluation.evaluators` (k-NN, log regression, linear probe; `dinov2_jax.eval.evaluators`)
  runs on the teacher every `period` iterations (and before training with `at_start`): results in
  `eval/training_<it>/results_eval_<name>.json`, one line per run in `<name>_metrics.json`, TensorBoard
  scalars `<name>/<key>`, with a PCA picture of the teacher's patch features on 8 validation images
  (`eval/training_<it>/pca.png`);
* after every checkpoint and evaluation, `training_curves.png` (losses, schedules, gradient norms,
  throughput, evaluations; `dinov2_jax.train.curves`) is redrawn;
* a non-finite loss stops the run with `TrainingDivergedError` naming the iteration; nothing computed
  after the last good checkpoint is saved.

The pieces that belong to other modules (objective, data, export) are reached through `Components`
so the loop itself can be tested with a toy objective.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import logging
import math
import os
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dinov2_jax import config as config_lib
from dinov2_jax.train import run_checks
from dinov2_jax.train.checkpoint import Checkpointer, as_path_string, tree_all_finite
from dinov2_jax.train.disk_full import DiskFullError, DiskFullGuard, is_disk_full
from dinov2_jax.train.stop_agreement import StepAgreement, StopSignals
from dinov2_jax.train.curves import plot_training_curves
from dinov2_jax.train.metrics_logger import MetricsLogger
from dinov2_jax.train.remote_dir import RemoteMirror, is_remote
from dinov2_jax.weights.matching import check_tree_like

log = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite."""


@dataclasses.dataclass
class Components:
    """What the loop needs from the objective, data and export modules (defaults: the real ones)."""

    create_train_state: Callable[..., Any]  # (cfg, key, mesh=mesh) -> state pytree
    make_train_step: Callable[..., Callable]  # (cfg) -> step(state, batch, hparams) -> (state, metrics)
    build_schedules: Callable[[Any], dict]  # cfg -> {name: np.ndarray}
    hparams_at: Callable[[dict, int], dict]  # (schedules, it) -> {name: float}
    make_train_loader: Callable[..., Any]  # (cfg, seed=...) -> iterator with get_state/set_state
    export_teacher: Callable[..., None] | None = None  # (state, cfg, out_dir) -> None
    # (state, cfg) -> callable images -> [B, D]; a backbone module (with `forward_features`) also gets
    # the PCA picture of its patch features
    teacher_backbone: Callable[..., Any] | None = None
    # (state, cfg) -> state whose evaluated parameters are host arrays; a collective across processes
    # (parameters may be sharded over other processes' devices), run by every process before process 0
    # exports and evaluates. None: the state is used as it is.
    host_eval_state: Callable[..., Any] | None = None


def default_components() -> Components:
    from dinov2_jax.data.pipeline import make_train_loader
    from dinov2_jax.train import train_step as ts
    from dinov2_jax.train.schedules import build_schedules, hparams_at

    def create_train_state(cfg, key, mesh=None):
        state = ts.create_train_state(cfg, key, mesh=mesh)
        if cfg.student.pretrained_weights:
            state = load_pretrained_student(cfg, state)
        if ts.is_frozen_teacher(cfg):
            state = state.replace(teacher=load_pretrained_teacher(cfg, state.teacher))
        return state

    def make_train_step(cfg):
        # donate the old state: its buffers are reused for the new one (halves peak state memory)
        step = jax.jit(ts.make_train_step(cfg), donate_argnums=0)
        if not cfg.crops.photometric_on_device:
            return step
        from dinov2_jax.data.device_augment import augment_batch

        # uint8 crops + sampled params -> the step's float32 crops, jitted on the (sharded) device batch
        augment = jax.jit(augment_batch)
        return lambda state, batch, hparams: step(state, augment(batch), hparams)

    def make_loader(cfg, seed):
        # one loader per process feeds all its local devices; `_put_batch` assembles the global batch
        return make_train_loader(cfg, seed=seed, sample_index=True,
                                 batch_size_per_process=cfg.train.batch_size_per_gpu * jax.local_device_count())

    return Components(create_train_state=create_train_state, make_train_step=make_train_step,
                      build_schedules=build_schedules, hparams_at=hparams_at,
                      make_train_loader=make_loader, export_teacher=export_teacher,
                      teacher_backbone=lambda state, cfg: eval_modules(state, cfg)["backbone"],
                      host_eval_state=host_eval_state)


def host_eval_state(state, cfg):
    """`state` with the parameters evaluation reads (the teacher; the student for a frozen teacher) as
    host numpy arrays. With several processes they are all-gathered: every process must call this."""
    from dinov2_jax.train.train_step import is_frozen_teacher

    part = "student" if is_frozen_teacher(cfg) else "teacher"
    tree = getattr(state, part)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        tree = multihost_utils.process_allgather(tree, tiled=True)
    return state.replace(**{part: jax.device_get(tree)})


def _modules_from_params(cfg, params: dict, *, teacher: bool) -> dict:
    """NNX modules {"backbone", "dino_head"[, "ibot_head"]} of the given arch, holding `params`."""
    from flax import nnx

    from dinov2_jax.train.train_step import build_modules

    abstract = nnx.eval_shape(lambda: build_modules(cfg, jax.random.key(0), teacher=teacher))
    out = {}
    for name, params_i in params.items():
        graphdef, abstract_params, rest = nnx.split(abstract[name], nnx.Param, ...)
        if jax.tree.leaves(rest):
            raise ValueError(f"{name}: unexpected non-parameter state in the module")
        state = nnx.State(jax.tree.map(jnp.asarray, params_i))
        out[name] = nnx.merge(graphdef, state, rest)
    return out


def eval_modules(state, cfg) -> dict:
    """The modules to evaluate / export: the EMA teacher, or with a frozen pretrained teacher
    (distillation) the student, which is what that run produces."""
    from dinov2_jax.train.train_step import is_frozen_teacher

    if is_frozen_teacher(cfg):
        return _modules_from_params(cfg, jax.device_get(state.student), teacher=False)
    return _modules_from_params(cfg, jax.device_get(state.teacher), teacher=True)


@dataclasses.dataclass
class TrainResult:
    start_iteration: int  # first iteration this call ran
    next_iteration: int  # first iteration a resumed run would run
    last_iteration: int  # last iteration of the full run
    stopped_by_signal: bool
    losses: dict[int, float]  # iteration -> total loss, for the iterations this call ran
    final_record: dict[str, float] | None


def iteration_range(cfg: ml_collections.ConfigDict, schedule_len: int) -> int:
    """Index of the last iteration to run (inclusive)."""
    if cfg.train.max_iterations > 0:
        return int(cfg.train.max_iterations) - 1
    return schedule_len  # official: `while iteration <= max_iter`, one step past the schedule


def check_output_dir(path: str) -> str:
    """Creates `path` and checks it is writable; returns the absolute path (a remote URL such as
    gs://bucket/run keeps its scheme: it is opened through etils.epath, as Orbax does)."""
    from etils import epath

    path = as_path_string(path)
    try:
        p = epath.Path(path)
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".write_test_{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise PermissionError(
            f"train.output_dir={path!r} is not writable ({e.strerror or e}); pass "
            f"--config.train.output_dir=<a writable directory>") from None
    return path


def check_dataset_spec(spec: str, key: str = "train.dataset_path") -> None:
    """Early, clear error for a dataset that cannot exist (the loader checks the rest)."""
    if not spec:
        raise ValueError(f"{key} is empty; use 'folder:PATH', 'tfds:NAME:SPLIT[:DATA_DIR]' or 'demo'")
    if spec.startswith("folder:"):
        path = spec[len("folder:"):]
        if not os.path.isdir(path):
            raise FileNotFoundError(
                f"{key}={spec!r}: directory {path!r} does not exist; point it at an image folder "
                f"(e.g. ImageNet train/) or use 'demo' for the built-in data")


def _to_float_dict(tree: dict) -> dict[str, float]:
    return {k: float(v) for k, v in tree.items()}


def _loss_of(metrics: dict[str, float]) -> float:
    for k in ("total_loss", "loss"):
        if k in metrics:
            return metrics[k]
    raise KeyError(f"train step metrics have neither 'total_loss' nor 'loss': {sorted(metrics)}")


def _put_batch(batch: dict, mesh) -> dict:
    if mesh is None:
        return jax.device_put(batch)
    from dinov2_jax.parallel.sharding import make_global_dinov2_batch

    # group-major: the processes' batches (and photometric params) one after the other, whole groups
    # per device
    return make_global_dinov2_batch(batch, mesh)


def build_mesh(cfg: ml_collections.ConfigDict):
    """Device mesh from `cfg.mesh`; checks the global batch splits evenly over the batch shards."""
    from dinov2_jax.parallel.mesh import batch_axis_size, make_mesh

    mesh = make_mesh(cfg.mesh)
    n = batch_axis_size(mesh)
    global_batch = cfg.train.batch_size_per_gpu * jax.device_count()
    if global_batch % n:
        raise ValueError(
            f"global batch {global_batch} (train.batch_size_per_gpu={cfg.train.batch_size_per_gpu} x "
            f"{jax.device_count()} devices) is not divisible by the {n} batch shards of mesh {dict(mesh.shape)}")
    return mesh


def train(cfg: ml_collections.ConfigDict, components: Components | None = None, *,
          stream=None, use_mesh: bool = True) -> TrainResult:
    """Runs or resumes the run of `cfg` (not yet finalized: the LR scaling rule is applied here)."""
    world = jax.device_count()
    run_checks.check_config_values(cfg)  # before the LR scaling rule divides by the batch size
    cfg = config_lib.finalize_config(cfg, world)
    output_dir = check_output_dir(cfg.train.output_dir)
    check_dataset_spec(cfg.train.dataset_path)
    run_checks.check_eval_inputs(cfg)
    agree = StepAgreement()
    is_main = jax.process_index() == 0  # files are written once per run, by process 0
    lock = run_checks.RunLock(output_dir, warn=lambda m: print(m, file=stream or sys.stderr, flush=True))
    lock_error = None
    if is_main:
        try:
            lock.acquire()
        except run_checks.OutputDirInUseError as e:
            lock_error = e
    if not agree.all_true(lock_error is None):
        raise lock_error or run_checks.OutputDirInUseError(
            f"train.output_dir={output_dir!r} is in use by another run (process 0 could not lock it)")
    try:
        return _train_locked(cfg, components, stream, use_mesh, output_dir, agree)
    finally:
        lock.release()


def _train_locked(cfg, components, stream, use_mesh, output_dir, agree) -> TrainResult:
    world = jax.device_count()
    comp = components or default_components()  # after the input checks: they need no heavy imports
    is_main = jax.process_index() == 0
    # a remote output dir (gs://...): checkpoints go there directly, the other files through a local
    # mirror uploaded after every checkpoint (dinov2_jax/train/remote_dir.py)
    mirror = RemoteMirror(output_dir) if is_remote(output_dir) and is_main else None
    if mirror is not None:
        mirror.download()
    files_dir = mirror.local if mirror is not None else output_dir

    def upload():
        if mirror is None:
            return
        try:
            mirror.upload()
        except Exception as e:  # noqa: BLE001 - the checkpoints are safe; the logs are retried next time
            logger.info(f"WARNING: could not copy the run's files from {mirror.local} to {output_dir}: {e!r}")

    if is_main:
        config_lib.save_config(cfg, files_dir)
    config_json = config_lib.config_to_json(cfg)

    logger = MetricsLogger(files_dir, total_iters=0, stream=stream, write_files=is_main)
    if mirror is not None:
        logger.info(f"train.output_dir {output_dir} is remote: checkpoints are written there, the logs, curves and "
                    f"exports to {mirror.local} and copied there after every checkpoint")
    if logger.dropped_torn_line:
        logger.info(f"Dropped the cut-off last line of {files_dir}/training_metrics.json (the previous run was "
                    f"killed while writing it): {logger.dropped_torn_line[:80]!r}")
    mesh = build_mesh(cfg) if use_mesh else None
    from dinov2_jax.train.precision import resolve_precision

    logger.info(f"precision on {jax.default_backend()}: {resolve_precision(cfg).describe()}")
    schedules = comp.build_schedules(cfg)
    schedule_len = len(schedules["lr"])
    last_it = iteration_range(cfg, schedule_len)
    logger.total_iters = last_it + 1

    key = jax.random.key(cfg.train.seed)
    state = (comp.create_train_state(cfg, key, mesh=mesh) if mesh is not None
             else comp.create_train_state(cfg, key))
    ckpt = Checkpointer(os.path.join(output_dir, "ckpt"), max_to_keep=cfg.train.max_to_keep)
    start_it = 0
    latest, state, data_state, saved_cfg = ckpt.restore_latest_valid(state, warn=logger.info,
                                                                     all_true=agree.all_true)
    if latest is not None:
        start_it = latest
        run_checks.check_resume_compatible(saved_cfg, cfg, f"{ckpt.directory}/{latest}")
        changed = config_lib.config_diff(config_lib.config_from_json(json.dumps(saved_cfg)), cfg)
        logger.info(f"Resuming from {ckpt.directory}/{latest} (iteration {start_it})"
                    + (f"; config keys changed since that checkpoint: {changed}" if changed else ""))
    else:
        if cfg.MODEL.WEIGHTS:
            state = init_from_weights(state, cfg.MODEL.WEIGHTS)
            logger.info(f"Initialised student and teacher from {cfg.MODEL.WEIGHTS} (MODEL.WEIGHTS); "
                        f"optimizer state and iteration start fresh")
        logger.info(f"Starting a new run in {output_dir} (lr {cfg.optim.lr:.6g} = base_lr {cfg.optim.base_lr}, "
                    f"{cfg.optim.scaling_rule} for a batch of {cfg.train.batch_size_per_gpu * world})")

    if start_it > last_it:
        logger.info(f"Run already complete (next iteration {start_it} > last {last_it}); nothing to do.")
        ckpt.close()
        logger.close()
        return TrainResult(start_it, start_it, last_it, False, {}, None)

    from dinov2_jax.eval.evaluators import due, evaluators_from_config

    evaluators = evaluators_from_config(cfg.evaluation)
    at_start = [name for name, opts in evaluators.items() if opts["at_start"]]
    if latest is None and at_start:  # the random-init baseline
        run_periodic_eval(cfg, comp, state, -1, files_dir, logger, export=False, names=at_start)

    loader = comp.make_train_loader(cfg, seed=cfg.train.seed)
    if data_state is not None:
        loader.set_state(data_state)
    step_fn = comp.make_train_step(cfg)
    stop = StopSignals(stream=stream).install()
    from dinov2_jax.data.pipeline import SkippedImageCount

    skipped = SkippedImageCount(jax.process_index(), jax.process_count(), cfg.train.get("num_workers", 0),
                                fresh_start=latest is None)
    global_batch = cfg.train.batch_size_per_gpu * world

    losses: dict[int, float] = {}
    record = None
    pending: tuple[int, Any] | None = None  # (iteration, device metrics) not yet checked on host
    last_saved = latest
    t_window = time.time()
    n_window = 0
    data_time = 0.0

    def kept() -> str:
        if last_saved is None:
            return "No checkpoint had been saved yet"
        return (f"The last checkpoint ({ckpt.directory}/{last_saved}) is kept (its values were finite when "
                f"saved; a resume checks its checksums)")

    def drain():
        """Pulls the pending metrics to host, stops on a non-finite loss, feeds the logger."""
        nonlocal pending
        if pending is None:
            return
        it_p, m = pending
        pending = None
        m = _to_float_dict(jax.device_get(m))
        loss = _loss_of(m)
        if not math.isfinite(loss):
            raise TrainingDivergedError(
                f"loss is {loss} at iteration {it_p}; stopping. {kept()}; try a lower "
                f"optim.base_lr, optim.adamw_beta2=0.99 or student.drop_path_rate=0.1.")
        losses[it_p] = loss
        logger.update(m)

    def save(step: int):
        nonlocal last_saved
        if not tree_all_finite(state):
            raise TrainingDivergedError(
                f"the train state after iteration {step - 1} holds NaN/inf values; not saving it. "
                f"{kept()}.")
        ckpt.save(step, state, loader.get_state(), config_json)
        last_saved = step

    def draw_curves():
        # A picture must never end a long run: a failure is reported in the log, training goes on.
        if not is_main or guard.seen:
            return
        try:
            plot_training_curves(files_dir)
        except Exception as e:  # noqa: BLE001 - reported, not swallowed
            logger.info(f"WARNING: could not draw {files_dir}/training_curves.png: {e!r}")

    def disk_full_error() -> DiskFullError:
        return DiskFullError(
            errno.ENOSPC, f"no space left on device while writing to {output_dir}. A checkpoint that was not "
            f"complete is ignored on resume (the newest complete one is used): free space (or lower "
            f"train.max_to_keep) and run the same command again")

    stopping = False
    guard = DiskFullGuard(stream).install()
    failure = None
    try:
        for it in range(start_it, last_it + 1):
            t_data = time.time()
            batch = next(loader)
            if "sample_index" in batch:  # positions of the delivered images: counts the dropped ones
                skipped.update(batch.pop("sample_index"))
            data_time = time.time() - t_data
            hp = {k: np.float32(v) for k, v in comp.hparams_at(schedules, it).items()}
            state, metrics = step_fn(state, _put_batch(batch, mesh), hp)
            metrics = dict(metrics)
            for k, v in hp.items():
                metrics.setdefault(k, v)
            drain()  # previous step's metrics; this step's compute overlaps the transfer
            pending = (it, metrics)
            n_window += 1
            is_last = it == last_it
            do_log = (it + 1) % cfg.train.log_period == 0 or is_last or it == start_it
            # every process learns whether any process was signalled, so all stop after this same
            # iteration and enter the (collective) save together
            stopping, skipped_total = agree.poll(stop.signum is not None, skipped.count)
            do_ckpt = (it + 1) % cfg.train.checkpoint_period == 0 or is_last or stopping
            period = cfg.evaluation.eval_period_iterations
            do_export = period > 0 and (it + 1) % period == 0
            eval_names = due(evaluators, it, period)
            do_eval = do_export or bool(eval_names)
            if do_log or do_ckpt or do_eval:
                drain()
            if do_log:
                dt = time.time() - t_window
                record = logger.log(it, {
                    "last_total_loss": losses[it],  # this iteration's value (the rest are window medians)
                    "iter_time": dt / max(n_window, 1), "data_time": data_time,
                    "images_per_s": global_batch * n_window / max(dt, 1e-9),
                    "current_batch_size": cfg.train.batch_size_per_gpu,
                    "skipped_images": skipped_total,  # unreadable images dropped so far, all processes
                })
                t_window, n_window = time.time(), 0
            if do_ckpt:  # before the evaluation: a failing evaluation must not cost the iterations before it
                save(it + 1)
            if do_eval:
                t_eval = time.time()
                run_periodic_eval(cfg, comp, state, it, files_dir, logger, export=do_export, names=eval_names)
                t_window += time.time() - t_eval  # evaluation time is not training throughput
            if do_ckpt or do_eval:
                draw_curves()
            if do_ckpt:
                upload()
            if stopping:
                who = f"signal {stop.signum}" if stop.signum is not None else "a stop signal of another process"
                logger.info(f"Received {who} at iteration {it}: saved checkpoint "
                            f"{ckpt.directory}/{it + 1}; exiting. Restart with the same "
                            f"train.output_dir to resume.")
                break
        drain()
    except BaseException as e:
        failure = e
        if is_disk_full(e):
            raise disk_full_error() from None
        raise
    finally:
        stop.restore()
        try:
            for close in (ckpt.close, logger.close):  # ckpt.close waits for the last asynchronous save
                try:
                    close()
                except BaseException as e:
                    if failure is not None:
                        continue  # the first error is the one reported
                    failure = e
                    if is_disk_full(e):
                        raise disk_full_error() from None
                    raise
        finally:
            guard.remove()
            if not guard.seen:
                upload()
    return TrainResult(start_it, (last_saved or 0), last_it, stopping, losses, record)


def init_from_weights(state, weights: str):
    """`MODEL.WEIGHTS` (official `resume_or_load` without resume): the student and teacher parameters of
    another run's checkpoint directory (`OTHER_RUN/ckpt`, its newest step, or one step directory
    `OTHER_RUN/ckpt/<it>`); optimizer state, centers and iteration are not taken."""
    directory, step = os.path.abspath(weights), None
    if os.path.basename(directory).isdigit():
        directory, step = os.path.dirname(directory), int(os.path.basename(directory))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"MODEL.WEIGHTS={weights!r} does not exist (a run's ckpt/ or ckpt/<it> directory)")
    ck = Checkpointer(directory)
    step = ck.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"MODEL.WEIGHTS={weights!r} holds no complete checkpoint")
    raw, _, _ = ck.restore_raw(step)
    ck.close()
    get = (lambda k: state[k]) if isinstance(state, dict) else (lambda k: getattr(state, k))
    new = {}
    for part in ("student", "teacher"):
        like = get(part)
        check_tree_like(like, raw[part], f"MODEL.WEIGHTS={weights!r} ({part})",
                        hint="the checkpoint must come from a run with the same model config")
        new[part] = _put_like(like, raw[part])
    return {**state, **new} if isinstance(state, dict) else state.replace(**new)


def run_periodic_eval(cfg, comp: Components, state, it: int, output_dir: str, logger: MetricsLogger,
                      export: bool = True, names: list[str] | None = None) -> None:
    """Teacher export to `eval/training_<it>/` (if `export`) and the evaluators `names` of
    `evaluation.evaluators` (default: all). `it = -1` (with `export=False`): the freshly initialised model.
    Every process joins the parameter gather; process 0 alone exports, evaluates and writes (the others
    wait for it at the next train step)."""
    from dinov2_jax.eval.evaluators import evaluators_from_config, run_evaluator, scalar_items

    evaluators = evaluators_from_config(cfg.evaluation)
    names = list(evaluators) if names is None else names
    out_dir = os.path.join(output_dir, "eval", f"training_{it}" if it >= 0 else "init")
    if comp.host_eval_state is not None:
        state = comp.host_eval_state(state, cfg)
    if jax.process_index() != 0:
        return
    if export and comp.export_teacher is not None:
        comp.export_teacher(state, cfg, out_dir)
        logger.info(f"Exported the teacher to {out_dir}")
    if not names:
        return
    if comp.teacher_backbone is None:
        raise ValueError("evaluation.evaluators is set but no teacher_backbone component is given")
    model_fn = comp.teacher_backbone(state, cfg)
    os.makedirs(out_dir, exist_ok=True)
    for name in names:
        opts = evaluators[name]
        t0 = time.time()
        scalars, results = run_evaluator(opts, model_fn)
        with open(os.path.join(out_dir, f"results_eval_{name}.json"), "a") as f:
            for k, v in results.items():
                f.write(json.dumps({k: v}) + "\n")
        logger.log_eval(name, it, scalars)
        logger.info(f"{name} ({opts['type']}) at iteration {it}{' (random init)' if it < 0 else ''} "
                    f"in {time.time() - t0:.1f}s: "
                    + ", ".join(f"{k}={v:.2f}" for k, v in scalar_items(scalars) if k.endswith("Top 1") or k == "top-1"))
    first = evaluators[names[0]]
    if hasattr(model_fn, "forward_features"):
        path = save_teacher_pca(model_fn, first["val_dataset"], os.path.join(out_dir, "pca.png"),
                                image_size=first["image_size"], resize_size=first["resize_size"])
        logger.info(f"PCA of the teacher's patch features: {path}")
    else:
        logger.info("No PCA picture: the teacher_backbone component gives no patch features")


def save_teacher_pca(backbone, dataset: str, path: str, *, image_size: int = 224, resize_size: int = 256,
                     n_images: int = 8) -> str:
    """PCA picture (`dinov2_jax.visualize`, per image) of `backbone`'s patch features on `n_images` images
    spread over a labelled dataset spec (first to last), after the eval transform. Returns `path`."""
    from dinov2_jax.data.augmentations import eval_transform
    from dinov2_jax.eval.features import load_labelled_source
    from dinov2_jax.extract import make_extract_fn
    from dinov2_jax.visualize import save_pca_picture

    src = load_labelled_source(dataset)
    picks = np.unique(np.linspace(0, len(src) - 1, n_images).round().astype(np.int64))
    records = (src.record(int(i)) for i in picks)
    images = np.stack([eval_transform(r[0], resize_size=resize_size, crop_size=image_size)
                       for r in records if r is not None])
    grid = image_size // backbone.patch_size
    patches = np.asarray(jax.device_get(make_extract_fn(backbone)(images)["patch_tokens"]), np.float32)
    # the images come from different classes (unrelated photos): one PCA per image
    save_pca_picture(images, patches.reshape(len(images), grid, grid, -1), path, max_images=n_images,
                     min_height=160, per_image=True)
    return path


def export_teacher(state, cfg, out_dir: str) -> str:
    """Writes the evaluated model (backbone + heads) to `out_dir` in the converter's format
    (`arch.json`, `heads.json`, `params/`); `python -m dinov2_jax.convert OUT x.pth --to-pth --teacher`
    turns it into the official `teacher_checkpoint.pth` layout."""
    import shutil

    from dinov2_jax.convert import save_converted

    if os.path.exists(out_dir):  # left by a run that crashed before its next checkpoint: redo it
        shutil.rmtree(out_dir)
    mods = eval_modules(state, cfg)
    backbone = mods.pop("backbone")
    return save_converted(backbone, out_dir, heads=mods)


def _read_pretrained(path: str, option: str) -> dict:
    """{"backbone": params[, "dino_head", "ibot_head"]} from a converted directory (`python -m
    dinov2_jax.convert`, or an `eval/training_*` export) or an official `.pth` checkpoint."""
    from flax import nnx

    from dinov2_jax import pretrained

    if os.path.exists(path):  # any from_pretrained format; a .pth goes through the weights-only reader
        ckpt = pretrained.read_checkpoint(path)
        model, heads = pretrained.build_from_checkpoint(ckpt, ckpt.config, with_heads=True)
    else:
        raise FileNotFoundError(f"{option}={path!r} does not exist (a converted directory or an official .pth)")
    params = {"backbone": nnx.state(model, nnx.Param).to_pure_dict()}
    for name, head in heads.items():
        params[name] = nnx.state(head, nnx.Param).to_pure_dict()
    return params


def _put_like(like: dict, params: dict) -> dict:
    """`params` as arrays with the dtypes and shardings of `like` (a freshly built, sharded tree)."""
    return jax.tree.map(lambda w, x: jax.device_put(jnp.asarray(x, w.dtype), getattr(w, "sharding", None)),
                        like, params)


def load_pretrained_student(cfg, state):
    """`student.pretrained_weights` (official SSLMetaArch): the student backbone starts from these weights
    (hub backbone or a run's export); the EMA teacher starts as its copy, as officially. Unlike the
    official `strict=False`, any missing / unexpected / mis-shaped key is an error that lists them."""
    path = cfg.student.pretrained_weights
    backbone = _read_pretrained(path, "student.pretrained_weights")["backbone"]
    check_tree_like(state.student["backbone"], backbone, f"student.pretrained_weights={path!r}",
                    hint="the backbone of the config (student.arch and student.* keys) must be the file's")
    log.info("student and teacher backbones initialised from %s", path)
    return state.replace(student={**state.student, "backbone": _put_like(state.student["backbone"], backbone)},
                         teacher={**state.teacher, "backbone": _put_like(state.teacher["backbone"], backbone)})


def load_pretrained_teacher(cfg, like_teacher: dict) -> dict:
    """Frozen distillation teacher from `teacher.pretrained_weights`: a converted directory
    (`python -m dinov2_jax.convert`, or an `eval/training_*` export) or an official `.pth`
    teacher checkpoint. It must hold the heads too (the targets are the teacher's head outputs) and
    match `teacher.arch` (+ the head sizes of the config)."""
    path = cfg.teacher.pretrained_weights
    params = _read_pretrained(path, "teacher.pretrained_weights")
    missing = sorted(set(like_teacher) - set(params))
    if missing:
        raise ValueError(f"teacher.pretrained_weights={path!r} has no {missing}: distillation needs the "
                         f"teacher's heads (use a training export eval/training_*/ or a teacher_checkpoint.pth)")
    params = {k: params[k] for k in like_teacher}
    check_tree_like(like_teacher, params, f"teacher.pretrained_weights={path!r}",
                    hint=f"the file must match teacher.arch={cfg.teacher.arch or cfg.student.arch!r} and the head config")
    return _put_like(like_teacher, params)
