"""`python -m dinov2_jax.train --config configs/quickstart.py [--config.KEY=VALUE ...]`

Runs (or resumes, when `train.output_dir` already holds checkpoints) a DINOv2 training run.
Runs under `absl.app.run` so that grain's worker processes find the flags parsed.
Exit codes: 0 done or stopped by SIGTERM / SIGINT after saving, 1 diverged (NaN/inf loss), 2 bad
config/input (incl. an output directory locked by another run, or no usable checkpoint), 3 disk full,
130 a second SIGINT (no save).
"""
from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py with get_config()); override keys with --config.KEY=VALUE.",
    lock_config=True)


def _parse_flags(argv):
    """Checks `--config.KEY` names (clear error with close matches) before absl parses them."""
    from dinov2_jax import config as config_lib

    path = None
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
    if path is None and any(a in ("--help", "-h", "--helpfull", "--helpshort") for a in argv):
        return flags.FLAGS(argv)
    if path is None:
        print("error: --config is required, e.g. python -m dinov2_jax.train --config configs/quickstart.py",
              file=sys.stderr)
        sys.exit(2)
    try:
        config_lib.check_argv_overrides(config_lib.load_config_file(path), argv)
    except (KeyError, FileNotFoundError, AttributeError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        return flags.FLAGS(argv)
    except (flags.Error, TypeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def main(argv):
    del argv
    from absl import logging as absl_logging

    from dinov2_jax.parallel.distributed import initialize_from_env
    from dinov2_jax.train import trainer
    from dinov2_jax.train.checkpoint import NoUsableCheckpointError
    from dinov2_jax.train.disk_full import DiskFullError
    from dinov2_jax.train.run_checks import OutputDirInUseError

    initialize_from_env()  # multi-host (SLURM / TPU pod / explicit coordinator); no-op for one process

    if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO; --verbosity=0 shows them
        absl_logging.set_verbosity(absl_logging.WARNING)

    cfg = _CONFIG.value
    try:
        result = trainer.train(cfg)
    except DiskFullError as e:
        print(f"error: {e.strerror}", file=sys.stderr, flush=True)
        sys.exit(3)
    except trainer.TrainingDivergedError as e:
        print(f"error: training diverged: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    except (FileNotFoundError, PermissionError, ValueError, OutputDirInUseError, NoUsableCheckpointError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    if result.stopped_by_signal:
        print(f"Stopped by signal; checkpoint at iteration {result.next_iteration} saved.", flush=True)
    return 0


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
