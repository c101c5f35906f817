#!/usr/bin/env python
"""Does the DINOv2 train step split its work over a mesh? XLA's own numbers on simulated devices.

    python benchmarks/scaling.py                      # all meshes, drop_path 0.0 and 0.4
    python benchmarks/scaling.py --meshes 8,1,1 --rates 0.4

Compiles the full step (`make_train_step`: teacher + student forward/backward, heads, losses, clip,
AdamW, EMA) on one device and on 8 simulated CPU devices (the script sets
`--xla_force_host_platform_device_count=8` itself) for each mesh (data, fsdp, tensor), and prints per mesh:
- per-device FLOPs from `compiled.cost_analysis()` and the split factor (1-device FLOPs / per-device FLOPs);
- bytes moved by collectives per step, parsed from the compiled HLO, per kind, next to an analytic budget
  (`budget_bytes`, see its docstring);
- compiled memory per device (`memory_analysis()`: arguments + temporaries).
Nothing runs; only compilation. Results are recorded in docs/benchmarks.md ("Scaling on a mesh").
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys

MESHES = ((8, 1, 1), (1, 8, 1), (2, 4, 1), (2, 2, 2))
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "pred": 1, "s8": 1, "u8": 1, "f64": 8,
                "s64": 8, "u64": 8, "s16": 2, "u16": 2}


def _setup_devices(n: int = 8) -> None:
    flag = f"--xla_force_host_platform_device_count={n}"
    if flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


# --------------------------------------------------------------------------------------------------
# the step to measure
def small_config(drop_path: float, n_prototypes: int = 1024):
    """ViT-S-like (192 dim, 4 blocks, patch 8), 2 x 32^2 + 4 x 16^2 crops, official recipe otherwise."""
    from configs.ssl_default import get_config

    cfg = get_config()
    cfg.student.arch = "vit_small"
    cfg.student.patch_size = 8
    cfg.student.drop_path_rate = drop_path
    cfg.student.attn_impl = "xla"
    cfg.dino.head_n_prototypes = cfg.ibot.head_n_prototypes = n_prototypes
    cfg.crops.global_crops_size, cfg.crops.local_crops_size, cfg.crops.local_crops_number = 32, 16, 4
    cfg.compute_precision.compute_dtype = "float32"
    return cfg, dict(embed_dim=192, depth=4, num_heads=3)


def synthetic_batch(cfg, n_images: int, groups: int = 8, seed: int = 0):
    """A batch in the loader's layout (`groups` device batches): random crops, official-recipe masks."""
    import random

    import numpy as np

    from dinov2_jax.data.masking import MaskingGenerator, collate

    g, s, p = cfg.crops.global_crops_size, cfg.crops.local_crops_size, cfg.student.patch_size
    rng = np.random.default_rng(seed)
    grid = g // p
    samples = [{"global_crops": rng.standard_normal((2, g, g, 3)).astype(np.float32),
                "local_crops": rng.standard_normal((cfg.crops.local_crops_number, s, s, 3)).astype(np.float32)}
               for _ in range(n_images)]
    gen = MaskingGenerator((grid, grid), max_num_patches=int(0.5 * grid * grid))
    return collate(samples, mask_generator=gen, rng=random.Random(seed),
                   mask_ratio_tuple=tuple(cfg.ibot.mask_ratio_min_max),
                   mask_probability=cfg.ibot.mask_sample_probability, groups=groups)


HPARAMS = {"lr": 1e-3, "wd": 0.04, "mom": 0.99, "teacher_temp": 0.05, "last_layer_lr": 1e-3}


def compile_step(cfg, arch, batch, mesh=None):
    """The jitted train step compiled for `mesh` (None: one device), from abstract inputs only."""
    import jax
    import numpy as np

    from dinov2_jax.parallel.sharding import batch_shardings, param_shardings, replicated
    from dinov2_jax.train.train_step import create_train_state, make_train_step

    step = make_train_step(cfg, arch_overrides=arch)
    state = jax.eval_shape(lambda k: create_train_state(cfg, k, arch_overrides=arch), jax.random.key(0))
    hp = {k: np.float32(v) for k, v in HPARAMS.items()}
    if mesh is None:
        return jax.jit(step).lower(state, batch, hp).compile()
    s_sh = param_shardings(state, mesh, min_size=cfg.mesh.fsdp_min_size)
    b_sh = batch_shardings(batch, mesh)
    h_sh = {k: replicated(mesh) for k in hp}
    return jax.jit(step, in_shardings=(s_sh, b_sh, h_sh), out_shardings=(s_sh, None)).lower(
        state, batch, hp).compile()


# --------------------------------------------------------------------------------------------------
# what the compiled program does
def flops(compiled) -> float:
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):  # older jax: one dict per computation
        ca = ca[0]
    return float(ca["flops"])


def _shape_bytes(shape_text: str) -> int:
    """Bytes of an HLO shape like `f32[8,192]{1,0}` or a tuple `(f32[4], bf16[2,3])`."""
    total = 0
    for dt, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", shape_text):
        if dt not in _DTYPE_BYTES:
            continue
        total += _DTYPE_BYTES[dt] * math.prod(int(d) for d in dims.split(",") if d)
    return total


def collective_bytes(hlo_text: str) -> dict[str, int]:
    """Per collective kind: bytes of the full buffer each op moves, summed over the program's ops.

    The per-op size is that of the larger side: the gathered output of an all-gather, the input of a
    reduce-scatter, the operand of an all-reduce / all-to-all / collective-permute. Async pairs are
    counted once (the `-start` op). Ops inside loops (scan over blocks) count once per trip: their
    trip count is read from the loop's backend config when XLA annotates it, else 1 (reported).
    """
    out = {k: 0 for k in COLLECTIVES}
    trip = _loop_trip_counts(hlo_text)
    comp = None
    for line in hlo_text.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith("{"):  # computation header
            comp = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+)", line).group(1)
            continue
        m = re.match(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.+?)\s+(all-gather|all-reduce|reduce-scatter|all-to-all|"
                     r"collective-permute)(-start)?\(", line)
        if not m:
            continue
        result_shape, kind = m.group(1), m.group(2)
        operands = line[m.end():]
        op_bytes = _shape_bytes(operands.split("),")[0] if ")," in operands else operands.split(")")[0])
        size = max(_shape_bytes(result_shape), op_bytes)
        if m.group(3) and result_shape.startswith("("):  # async start: (operand, result[, ...])
            size = max(_shape_bytes(s) for s in re.findall(r"[a-z]+\d*\[[\d,]*\]", result_shape))
        out[kind] += size * trip.get(comp, 1)
    return out


def _loop_trip_counts(hlo_text: str) -> dict[str, int]:
    """{body computation name: known trip count} for while loops XLA annotated."""
    trips = {}
    for m in re.finditer(r"while\(.*?body=%?([\w.\-]+).*?known_trip_count[^\d]*(\d+)", hlo_text):
        trips[m.group(1)] = int(m.group(2))
    # nested computations called from a loop body (fusions, calls) inherit its count
    return trips


def memory_per_device(compiled) -> dict[str, int]:
    ma = compiled.memory_analysis()
    return {"arguments": int(ma.argument_size_in_bytes), "temporaries": int(ma.temp_size_in_bytes),
            "outputs": int(ma.output_size_in_bytes)}


def param_bytes(cfg, arch) -> int:
    """Bytes of the student parameters (float32); the teacher has the same."""
    import jax

    from dinov2_jax.train.train_step import create_train_state

    state = jax.eval_shape(lambda k: create_train_state(cfg, k, arch_overrides=arch), jax.random.key(0))
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state.student))


def budget_bytes(mesh_shape, p_bytes: int, tensor_activation_bytes: int = 0) -> int:
    """Analytic collective bytes of one step, in the `collective_bytes` measure.

    data parallel (data=D): one all-reduce of the student gradient (P bytes).
    FSDP (fsdp=F): all-gather of the student params for the forward and again for the backward, of the
      teacher params for its forward (3P), and a reduce-scatter of the gradient (P): 4P. With data > 1 as
      well, the F-sharded gradient is all-reduced over 'data' (P/F).
    tensor (tensor=T): the Megatron activation all-reduces, `tensor_activation_bytes` (passed in).
    """
    d, f, t = mesh_shape
    total = 0
    if f > 1:
        total += 4 * p_bytes // t
        if d > 1:
            total += p_bytes // (f * t)
    elif d > 1:
        total += p_bytes // t
    return total + tensor_activation_bytes


def tensor_activation_bytes(cfg, arch, batch, mesh_shape) -> int:
    """Megatron all-reduces of a [rows, width] activation in the compute dtype (full-buffer measure):
    per block 2 in the forward (attention out, MLP out) and 2 in the backward, for the student's global
    and local crops (forward + backward) and the teacher's global crops (forward only); per head call
    1 forward (+ 1 backward for the student) of the hidden layer, over the rows each head sees (cls tokens
    and the masked-token buffer)."""
    if mesh_shape[2] == 1:
        return 0
    dim, depth = arch["embed_dim"], arch["depth"]
    p = cfg.student.patch_size
    n_global, n_local = batch["collated_global_crops"].shape[0], batch["collated_local_crops"].shape[0]
    g_tok = (cfg.crops.global_crops_size // p) ** 2 + 1 + cfg.student.num_register_tokens
    l_tok = (cfg.crops.local_crops_size // p) ** 2 + 1 + cfg.student.num_register_tokens
    student_rows, teacher_rows = n_global * g_tok + n_local * l_tok, n_global * g_tok
    blocks = (4 * student_rows + 2 * teacher_rows) * depth * dim
    masked = batch["mask_indices_list"].size
    heads = (2 * (n_global + n_local + masked) + (n_global + masked)) * cfg.dino.head_hidden_dim
    return 4 * (blocks + heads)

def measure(rates=(0.0, 0.4), meshes=MESHES, n_images: int = 16, verbose: bool = True) -> list[dict]:
    import jax

    from dinov2_jax.parallel.mesh import make_mesh

    rows = []
    for rate in rates:
        cfg, arch = small_config(rate)
        batch = synthetic_batch(cfg, n_images)
        one = compile_step(cfg, arch, batch, None)
        f1 = flops(one)
        pb = param_bytes(cfg, arch)
        for shape in meshes:
            mesh = make_mesh(dict(zip(("data", "fsdp", "tensor"), shape)), devices=jax.devices()[:8])
            c = compile_step(cfg, arch, batch, mesh)
            coll = collective_bytes(c.as_text())
            budget = budget_bytes(shape, pb, tensor_activation_bytes(cfg, arch, batch, shape))
            row = {"drop_path": rate, "mesh": shape, "flops_1": f1, "flops_dev": flops(c),
                   "split": f1 / flops(c), "collectives": coll, "collective_total": sum(coll.values()),
                   "budget": budget, "param_bytes": pb, "memory": memory_per_device(c),
                   "memory_1": memory_per_device(one)}
            rows.append(row)
            if verbose:
                print(format_row(row), flush=True)
    return rows


def state_init_memory(config_path: str = "configs/vitg14.py", mesh_shape=(1, 8, 1)) -> dict:
    """Compiled memory per device of creating the train state born sharded (the trainer's path) vs the
    state's total bytes. Nothing is allocated: XLA's memory analysis of the compiled init."""
    import jax

    from dinov2_jax.config import load_config_file
    from dinov2_jax.parallel.mesh import make_mesh
    from dinov2_jax.parallel.sharding import param_shardings
    from dinov2_jax.train.train_step import create_train_state

    cfg = load_config_file(config_path)
    mesh = make_mesh(dict(zip(("data", "fsdp", "tensor"), mesh_shape)), devices=jax.devices()[:8])
    init = lambda k: create_train_state(cfg, k)
    shapes = jax.eval_shape(init, jax.random.key(0))
    total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes)
                if not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key))
    out_sh = param_shardings(shapes, mesh, min_size=cfg.mesh.fsdp_min_size)
    compiled = jax.jit(init, out_shardings=out_sh).lower(jax.random.key(0)).compile()
    mem = memory_per_device(compiled)
    per_device = mem["outputs"] + mem["temporaries"]
    return {"config": config_path, "mesh": mesh_shape, "state_bytes": total, "per_device_bytes": per_device,
            "fraction": per_device / total, **mem}


def format_row(r: dict) -> str:
    mem = r["memory"]
    coll = ", ".join(f"{k} {v / 1e6:.2f}" for k, v in r["collectives"].items() if v)
    return (f"drop_path {r['drop_path']:.1f} mesh (data,fsdp,tensor)={r['mesh']}: split {r['split']:.2f}x of 8 "
            f"({r['flops_dev'] / 1e9:.2f} of {r['flops_1'] / 1e9:.2f} GFLOP/device); collectives "
            f"{r['collective_total'] / 1e6:.2f} MB vs budget {r['budget'] / 1e6:.2f} MB "
            f"({r['collective_total'] / max(r['budget'], 1):.2f}x) [{coll}]; memory/device args "
            f"{mem['arguments'] / 1e6:.1f} MB + temp {mem['temporaries'] / 1e6:.1f} MB "
            f"(1 device: {r['memory_1']['arguments'] / 1e6:.1f} + {r['memory_1']['temporaries'] / 1e6:.1f})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--rates", type=float, nargs="+", default=[0.0, 0.4])
    ap.add_argument("--meshes", nargs="+", default=[",".join(map(str, m)) for m in MESHES],
                    help="data,fsdp,tensor triples")
    ap.add_argument("--init-config", default="configs/vitg14.py",
                    help="config whose state creation is analysed on fsdp=8 ('' to skip)")
    args = ap.parse_args()
    _setup_devices()
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    measure(tuple(args.rates), tuple(tuple(int(x) for x in m.split(",")) for m in args.meshes))
    if args.init_config:
        r = state_init_memory(args.init_config)
        print(f"state creation {r['config']} on fsdp=8: {r['per_device_bytes'] / 2**30:.2f} GiB per device "
              f"(outputs {r['outputs'] / 2**30:.2f} + temporaries {r['temporaries'] / 2**30:.2f}) of a "
              f"{r['state_bytes'] / 2**30:.2f} GiB state = {r['fraction']:.3f} (1/8 = 0.125)", flush=True)


if __name__ == "__main__":
    main()
