#!/usr/bin/env python
"""Blocks in a Python loop vs under `lax.scan` (`scan_blocks`): gradient time, per-device memory, and
the CPU attention gap that remains (numbers in docs/benchmarks.md, "Train step").

    python benchmarks/scan_blocks.py time --depths 4 12        # ViT-S/14 gradient, B=8, 224, fp32
    python benchmarks/scan_blocks.py memory                    # 8 simulated devices, fsdp=8
    python benchmarks/scan_blocks.py attention                 # one ViT-S attention fwd+bwd, JAX vs torch

`memory` sets XLA_FLAGS itself (8 host devices) and reports XLA's compiled temporary bytes per device
for the gradient of a 12-block, 512-dim ViT with every large array FSDP-sharded 8 ways.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def _median_ms(fn, n: int) -> float:
    import numpy as np

    fn()
    fn()  # compile + warm-up
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def _grad_fn(model):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    graph, params = nnx.split(model, nnx.Param)

    def loss(p, x):
        return jnp.mean(jnp.square(nnx.merge(graph, p)(x)))

    return params, jax.jit(jax.grad(loss))


def bench_time(args):
    import jax
    from flax import nnx

    from dinov2_jax.models.vision_transformer import build_backbone

    x = jax.random.normal(jax.random.key(0), (args.batch_size, 224, 224, 3))
    for depth in args.depths:
        for scan in (False, True):
            model = build_backbone("vit_small", patch_size=14, img_size=224, depth=depth, scan_blocks=scan,
                                   rngs=nnx.Rngs(0))
            params, g = _grad_fn(model)
            ms = _median_ms(lambda: jax.block_until_ready(g(params, x)), args.steps)
            print(f"ViT-S/14 depth {depth:2d} B={args.batch_size} gradient, {'scan' if scan else 'loop'}: {ms:.0f} ms")


def bench_memory(args):
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P

    from dinov2_jax.models.vision_transformer import build_backbone
    from dinov2_jax.parallel.mesh import make_mesh
    from dinov2_jax.parallel.sharding import param_shardings

    mesh = make_mesh({"data": 1, "fsdp": 8, "tensor": 1})
    x = jax.device_put(jnp.ones((8, 32, 32, 3)), NamedSharding(mesh, P(("data", "fsdp"))))
    for scan in (False, True):
        model = build_backbone("vit_small", patch_size=8, img_size=32, embed_dim=512, depth=12, num_heads=8,
                               scan_blocks=scan, rngs=nnx.Rngs(0))
        params, g = _grad_fn(model)
        shardings = param_shardings(params, mesh)
        params = jax.device_put(params, shardings)
        compiled = jax.jit(g, out_shardings=shardings).lower(params, x).compile()
        mem = compiled.memory_analysis()
        total = sum(v.size * v.dtype.itemsize for v in jax.tree.leaves(params)) / 2**20
        print(f"{'scan' if scan else 'loop'}: parameters {total:.1f} MB ({total / 8:.1f} MB per device), "
              f"temporaries {mem.temp_size_in_bytes / 2**20:.1f} MB per device")


def bench_attention(args):
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    shape = (8, 257, 6, 64)  # ViT-S/14 at 224, batch 8
    q, k, v = (jax.random.normal(jax.random.key(i), shape) for i in range(3))
    g = jax.jit(jax.grad(lambda q, k, v: jnp.sum(jax.nn.dot_product_attention(q, k, v, implementation="xla") ** 2),
                         argnums=(0, 1, 2)))
    jax_ms = _median_ms(lambda: jax.block_until_ready(g(q, k, v)), args.steps)
    tq, tk, tv = (torch.tensor(np.asarray(a)).transpose(1, 2).contiguous().requires_grad_() for a in (q, k, v))

    def torch_step():
        (torch.nn.functional.scaled_dot_product_attention(tq, tk, tv) ** 2).sum().backward()

    torch_ms = _median_ms(torch_step, args.steps)
    print(f"attention fwd+bwd {shape} [B, N, H, hd]: jax xla {jax_ms:.1f} ms, torch SDPA {torch_ms:.1f} ms")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["time", "memory", "attention"])
    ap.add_argument("--depths", type=int, nargs="+", default=[4, 12])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3, help="timed calls (median)")
    args = ap.parse_args(argv)
    if args.what == "memory":
        if "jax" in sys.modules:
            raise SystemExit("memory: run as a fresh process (XLA_FLAGS must be set before jax is imported)")
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    {"time": bench_time, "memory": bench_memory, "attention": bench_attention}[args.what](args)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root
    main()
