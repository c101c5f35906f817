"""`python -m dinov2_jax.train` preceded by `initialize_from_env()` (idempotent), for the multi-process
trainer test: `python launch/local_multiprocess.py -n 2 -- tests/parallel/train_entry.py --config ...`."""
import runpy
import sys

from dinov2_jax.parallel.distributed import initialize_from_env

initialize_from_env()
sys.argv = ["dinov2_jax.train"] + sys.argv[1:]
runpy.run_module("dinov2_jax.train", run_name="__main__", alter_sys=True)
