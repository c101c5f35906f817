#!/usr/bin/env python
"""JAX train-step benchmark: images/s, step time, analytic model FLOPs / MFU, peak device memory.

Two workloads (`--mode`):
  backbone  ViT forward + backward on [B, S, S, 3] images (loss = mean of the squared cls token) plus
            an AdamW update: the same work as benchmarks/train_step_torch.py, for the JAX/PyTorch ratio.
  dinov2    the full DINOv2 step of dinov2_jax.train.train_step (teacher on 2 global crops, student on
            2 global + n local crops, DINO/iBOT heads, losses, clip, AdamW, EMA); B images per step.

    python benchmarks/train_step.py --arch vit_large --patch-size 14 --batch-size 32 --dtype bfloat16 --attn cudnn
    python benchmarks/train_step.py --arch tiny --img-size 56 --batch-size 4 --steps 3        # CPU smoke test

MFU = analytic model FLOPs (matmuls + attention, forward x3 for forward+backward; remat recompute is
not counted) / (step time x peak). Peak: per device kind from PEAK_TFLOPS (dense, no sparsity; bf16
tensor core, or TF32 for float32 compute on GPU) or `--peak-tflops`. Peak memory from
`device.memory_stats()["peak_bytes_in_use"]` where the backend reports it (GPU/TPU; not CPU).
Runs on one device; the printed line `RESULT {json}` is for collecting results.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

# ---- architectures and analytic FLOPs (pure Python: shared with train_step_torch.py) -------------
# name -> (embed_dim, depth, num_heads, ffn_layer)
ARCHS = {
    "tiny": (64, 2, 2, "mlp"),
    "vit_small": (384, 12, 6, "mlp"),
    "vit_base": (768, 12, 12, "mlp"),
    "vit_large": (1024, 24, 16, "mlp"),
    "vit_giant2": (1536, 40, 24, "swiglufused"),
}

# Dense peak TFLOP/s per device: (bf16, fp32 matmul as run by default: TF32 on Ampere+/Hopper GPUs).
# Substrings of `jax.devices()[0].device_kind` / torch.cuda.get_device_name(), first match wins.
PEAK_TFLOPS = [
    ("H200", (989.0, 494.0)),
    ("H100 PCIe", (756.0, 378.0)),
    ("H100", (989.0, 494.0)),  # SXM
    ("GH200", (989.0, 494.0)),
    ("A100", (312.0, 156.0)),
    ("L40S", (362.0, 183.0)),
    ("L4", (121.0, 60.0)),
    ("A10", (125.0, 62.5)),
    ("V100", (125.0, 15.7)),
    ("TPU v6", (918.0, 918.0)),
    ("TPU v5p", (459.0, 459.0)),
    ("TPU v5 lite", (197.0, 197.0)),
    ("TPU v5e", (197.0, 197.0)),
    ("TPU v4", (275.0, 275.0)),
]


def peak_tflops(device_kind: str, dtype: str) -> float | None:
    """Peak dense TFLOP/s for a device kind string, or None if unknown (e.g. CPU)."""
    for sub, (bf16, fp32) in PEAK_TFLOPS:
        if sub.lower() in device_kind.lower():
            return bf16 if dtype in ("bfloat16", "float16") else fp32
    return None


def ffn_macs_per_token(dim: int, ffn_layer: str) -> int:
    """Multiply-accumulates of one FFN per token (mlp_ratio 4; SwiGLU hidden as the official rounding)."""
    hidden = 4 * dim
    if ffn_layer == "mlp":
        return 2 * dim * hidden
    h = (int(hidden * 2 / 3) + 7) // 8 * 8  # official SwiGLUFFNFused hidden size
    return 3 * dim * h  # w12: D -> 2h, w3: h -> D


def vit_forward_flops(arch: str, img_size: int, patch_size: int, num_register_tokens: int = 0) -> float:
    """Analytic forward FLOPs of one image through the backbone (matmuls + attention; 2 FLOPs per MAC)."""
    dim, depth, _, ffn = ARCHS[arch]
    n_patch = (img_size // patch_size) ** 2
    n = 1 + num_register_tokens + n_patch
    patch_embed = n_patch * patch_size * patch_size * 3 * dim
    per_block = n * (3 * dim * dim + dim * dim + ffn_macs_per_token(dim, ffn)) + 2 * n * n * dim  # QK^T and AV
    return 2.0 * (patch_embed + depth * per_block)


def head_forward_flops(in_dim: int, hidden: int, bottleneck: int, k: int) -> float:
    """Forward FLOPs of one token through the 3-layer DINO head."""
    return 2.0 * (in_dim * hidden + hidden * hidden + hidden * bottleneck + bottleneck * k)


def backbone_step_flops(arch, img, patch, batch, reg=0) -> float:
    """Forward + backward (x3) of the backbone for `batch` images."""
    return 3.0 * batch * vit_forward_flops(arch, img, patch, reg)


def dinov2_step_flops(arch, batch, g_size, l_size, patch, n_local, head_dims, n_masked, reg=0) -> float:
    """DINOv2 step: teacher forward on 2B globals, student fwd+bwd on 2B globals + nL*B locals, heads."""
    g = vit_forward_flops(arch, g_size, patch, reg)
    loc = vit_forward_flops(arch, l_size, patch, reg)
    h = head_forward_flops(ARCHS[arch][0], *head_dims)
    teacher = 2 * batch * g + (2 * batch + n_masked) * h
    student = 3 * (2 * batch * g + n_local * batch * loc + ((2 + n_local) * batch + n_masked) * h)
    return teacher + student


def add_common_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--arch", default="vit_small", choices=sorted(ARCHS))
    ap.add_argument("--patch-size", type=int, default=14)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32, help="images per step (one device)")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"], help="compute dtype")
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    ap.add_argument("--peak-tflops", type=float, default=None, help="override the peak of the device table")
    ap.add_argument("--registers", type=int, default=0)


def summarize(name, device_kind, args, step_times, flops, images, peak_mem, extra=None) -> dict:
    """Prints the human-readable summary and the RESULT json line; returns the dict."""
    t = sorted(step_times)[len(step_times) // 2]  # median
    peak = args.peak_tflops or peak_tflops(device_kind, args.dtype)
    achieved = flops / t / 1e12
    res = {
        "framework": name, "device": device_kind, "arch": args.arch, "patch": args.patch_size,
        "img": args.img_size, "batch": args.batch_size, "dtype": args.dtype,
        "step_time_s": t, "images_per_s": images / t, "model_tflops_per_step": flops / 1e12,
        "achieved_tflops": achieved, "peak_tflops": peak, "mfu": (achieved / peak) if peak else None,
        "peak_memory_gib": None if peak_mem is None else peak_mem / 2**30,
    }
    res.update(extra or {})
    mfu = f"{100 * res['mfu']:.1f}%" if res["mfu"] is not None else "n/a (unknown peak; pass --peak-tflops)"
    mem = f"{res['peak_memory_gib']:.2f} GiB" if peak_mem is not None else "n/a (backend reports none)"
    print(f"[{name}] {args.arch}/{args.patch_size} img {args.img_size} batch {args.batch_size} {args.dtype} "
          f"on {device_kind}: step {1000 * t:.1f} ms, {res['images_per_s']:.1f} img/s, "
          f"{achieved:.2f} TFLOP/s, MFU {mfu}, peak memory {mem}")
    print("RESULT " + json.dumps(res))
    return res


# ---- JAX ------------------------------------------------------------------------------------------
def _peak_memory(dev):
    try:
        stats = dev.memory_stats()
    except Exception:  # noqa: BLE001 - some backends raise instead of returning None
        return None
    return None if not stats else stats.get("peak_bytes_in_use")


def _time_steps(run, n_warmup, n_steps):
    t0 = time.perf_counter()
    run()  # compile + first step
    compile_s = time.perf_counter() - t0
    for _ in range(n_warmup):
        run()
    times = []
    for _ in range(n_steps):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return compile_s, times


def bench_backbone(args):
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from dinov2_jax.models.vision_transformer import build_backbone

    dim, depth, heads, ffn = ARCHS[args.arch]
    arch = "vit_small" if args.arch == "tiny" else args.arch
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    model = build_backbone(arch, patch_size=args.patch_size, img_size=args.img_size, embed_dim=dim, depth=depth,
                           num_heads=heads, ffn_layer=ffn, init_values=1e-5, num_register_tokens=args.registers,
                           attn_impl=args.attn, remat=args.remat, scan_blocks=args.scan_blocks, dtype=dtype,
                           drop_path_rate=args.drop_path,
                           drop_path_uniform=True, rngs=nnx.Rngs(0))
    graph, params = nnx.split(model, nnx.Param)
    tx = optax.adamw(1e-4, weight_decay=0.04)
    opt = tx.init(params)

    def loss_fn(p, x, key):
        m = nnx.merge(graph, p)
        cls = m.forward_features(x, key=key if args.drop_path > 0 else None)["x_norm_clstoken"]
        return jnp.mean(jnp.square(cls.astype(jnp.float32)))

    def step_fn(p, o, x, key):
        loss, g = jax.value_and_grad(loss_fn)(p, x, key)
        upd, o = tx.update(g, o, p)
        return optax.apply_updates(p, upd), o, loss

    step = jax.jit(step_fn, donate_argnums=(0, 1))
    x = jax.device_put(np.random.default_rng(0).standard_normal(
        (args.batch_size, args.img_size, args.img_size, 3)).astype(np.float32))
    key = jax.random.key(0)
    state = [params, opt]

    def run():
        state[0], state[1], loss = step(state[0], state[1], x, key)
        loss.block_until_ready()

    compile_s, times = _time_steps(run, args.warmup, args.steps)
    flops = backbone_step_flops(args.arch, args.img_size, args.patch_size, args.batch_size, args.registers)
    dev = jax.devices()[0]
    return summarize("jax", dev.device_kind, args, times, flops, args.batch_size, _peak_memory(dev),
                     {"mode": "backbone", "attn": model.attn_impl, "remat": args.remat, "scan_blocks": args.scan_blocks,
                      "compile_s": compile_s, "drop_path": args.drop_path})


def bench_dinov2(args):
    import jax
    import numpy as np

    from configs.ssl_default import get_config
    import random

    from dinov2_jax.data.masking import MaskingGenerator, collate
    from dinov2_jax.train.train_step import create_train_state, make_train_step

    dim, depth, heads, ffn = ARCHS[args.arch]
    cfg = get_config()
    cfg.student.arch = "vit_small" if args.arch == "tiny" else args.arch
    cfg.student.patch_size = args.patch_size
    cfg.student.ffn_layer = ffn
    cfg.student.attn_impl = args.attn
    cfg.student.remat = args.remat
    cfg.student.scan_blocks = args.scan_blocks
    cfg.student.drop_path_rate = args.drop_path
    cfg.student.num_register_tokens = args.registers
    cfg.compute_precision.compute_dtype = args.dtype
    cfg.crops.global_crops_size = args.img_size
    cfg.crops.local_crops_size = args.local_size
    cfg.crops.local_crops_number = args.n_local
    cfg.train.batch_size_per_gpu = args.batch_size
    for head in (cfg.dino, cfg.ibot):
        head.head_n_prototypes = args.prototypes
        head.head_hidden_dim = args.head_hidden
        head.head_bottleneck_dim = args.head_bottleneck
    overrides = dict(embed_dim=dim, depth=depth, num_heads=heads)
    state = create_train_state(cfg, jax.random.key(0), arch_overrides=overrides)
    step = jax.jit(make_train_step(cfg, arch_overrides=overrides), donate_argnums=0)

    B, S, s, nl = args.batch_size, args.img_size, args.local_size, args.n_local
    grid = S // args.patch_size
    rng = np.random.default_rng(0)
    samples = [{"global_crops": rng.standard_normal((2, S, S, 3)).astype(np.float32),
                "local_crops": rng.standard_normal((nl, s, s, 3)).astype(np.float32)} for _ in range(B)]
    # one device = one group, masks as the official collate draws them
    batch = jax.device_put(collate(samples, mask_generator=MaskingGenerator((grid, grid), max_num_patches=grid * grid // 2),
                                   rng=random.Random(0)))
    n_masked = int(batch["n_masked_patches"].sum())
    hp = {k: np.float32(v) for k, v in dict(lr=1e-4, wd=0.04, mom=0.994, teacher_temp=0.07, last_layer_lr=1e-4).items()}
    holder = [state]

    def run():
        holder[0], m = step(holder[0], batch, hp)
        m["loss"].block_until_ready()

    compile_s, times = _time_steps(run, args.warmup, args.steps)
    flops = dinov2_step_flops(args.arch, B, S, s, args.patch_size, nl,
                              (args.head_hidden, args.head_bottleneck, args.prototypes), n_masked, args.registers)
    dev = jax.devices()[0]
    return summarize("jax", dev.device_kind, args, times, flops, B, _peak_memory(dev),
                     {"mode": "dinov2", "attn": args.attn, "remat": args.remat, "scan_blocks": args.scan_blocks,
                      "compile_s": compile_s, "n_local": nl, "local_size": s, "drop_path": args.drop_path})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)
    ap.add_argument("--mode", default="backbone", choices=["backbone", "dinov2"])
    ap.add_argument("--attn", default="xla", choices=["auto", "xla", "cudnn", "pallas"],
                    help="attention backend (cudnn/pallas need a GPU; pallas runs interpreted on CPU)")
    ap.add_argument("--remat", default="none", choices=["none", "full", "dots"])
    ap.add_argument("--scan-blocks", action=argparse.BooleanOptionalAction, default=True,
                    help="blocks under lax.scan (default, as configs/ssl_default.py) or a Python loop")
    ap.add_argument("--drop-path", type=float, default=0.0, help="stochastic depth rate (0 = off, as torch side)")
    ap.add_argument("--n-local", type=int, default=8, help="dinov2 mode: local crops per image")
    ap.add_argument("--local-size", type=int, default=98, help="dinov2 mode: local crop size")
    ap.add_argument("--prototypes", type=int, default=65536, help="dinov2 mode: head prototypes")
    ap.add_argument("--head-hidden", type=int, default=2048)
    ap.add_argument("--head-bottleneck", type=int, default=256)
    args = ap.parse_args(argv)
    if args.img_size % args.patch_size:
        ap.error(f"--img-size {args.img_size} must be a multiple of --patch-size {args.patch_size}")
    if args.steps < 1:
        ap.error("--steps must be >= 1")
    return bench_backbone(args) if args.mode == "backbone" else bench_dinov2(args)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root: configs/
    main()
