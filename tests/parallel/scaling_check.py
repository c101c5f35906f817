"""Checker run in a subprocess with 8 simulated CPU devices (see test_scaling.py); prints one JSON line.

    python tests/parallel/scaling_check.py quick      # data=8 at drop_path 0.4, parser, bf16 reduces, giant init
    python tests/parallel/scaling_check.py full       # every mesh of benchmarks/scaling.py at 0.0 and 0.4
"""
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(0, ROOT)
import scaling  # noqa: E402

# XLA:CPU promotes bf16 all-reduces to f32 late in compilation (its all-reduce-promotion pass), so the
# reduction dtype the program asks for is read from the HLO right after SPMD partitioning, dumped here.
DUMP = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"dinov2_jax_spmd_{os.getpid()}")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={DUMP}"
                           " --xla_dump_hlo_pass_re=spmd-partitioning").strip()
scaling._setup_devices()
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from dinov2_jax.parallel.mesh import make_mesh  # noqa: E402


def parser_check() -> dict:
    """Known collectives: an all-gather of a [64, 32] f32 array and an all-reduce of [16] f32."""
    mesh = make_mesh({"data": 8})
    x = jax.device_put(jnp.ones((64, 32)), NamedSharding(mesh, P("data")))
    y = jax.device_put(jnp.ones((8, 16)), NamedSharding(mesh, P("data")))

    def f(a, b):
        full = jax.lax.with_sharding_constraint(a * 2, NamedSharding(mesh, P()))
        return full, jnp.sum(b, axis=0)

    hlo = jax.jit(f).lower(x, y).compile().as_text()
    return scaling.collective_bytes(hlo)


def _partitioned_hlo(compiled_fn) -> str:
    """HLO of the newest train-step module right after SPMD partitioning (see DUMP)."""
    import glob

    before = set(glob.glob(os.path.join(DUMP, "*jit_train_step*after_spmd-partitioning*")))
    compiled_fn()
    new = sorted(set(glob.glob(os.path.join(DUMP, "*jit_train_step*after_spmd-partitioning*"))) - before)
    assert len(new) == 1, new
    return open(new[0]).read()


def reduce_dtype_check() -> dict:
    """Gradient all-reduces of the data=8 step after SPMD partitioning, float32 vs bfloat16 compute:
    bytes, and how many are bfloat16."""
    out = {}
    mesh = make_mesh({"data": 8})
    for name in ("float32", "bfloat16"):
        cfg, arch = scaling.small_config(0.0)
        cfg.compute_precision.compute_dtype = name
        batch = scaling.synthetic_batch(cfg, 16)
        hlo = _partitioned_hlo(lambda: scaling.compile_step(cfg, arch, batch, mesh))
        ops = re.findall(r"=\s*\(?(bf16|f32)\[[\d,]*\][^=]*?\sall-reduce(?:-start)?\(", hlo)
        out[name] = {"all_reduce": scaling.collective_bytes(hlo)["all-reduce"], "n": len(ops),
                     "bf16": ops.count("bf16")}
    return out


def main():
    mode = sys.argv[1]
    if mode == "quick":
        rows = scaling.measure(rates=(0.4,), meshes=((8, 1, 1),), verbose=False)
        res = {"rows": rows, "parser": parser_check(), "reduce": reduce_dtype_check(),
               "init": scaling.state_init_memory("configs/vitg14.py")}
    elif mode == "full":
        res = {"rows": scaling.measure(verbose=False)}
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(res, default=str))


if __name__ == "__main__":
    main()
