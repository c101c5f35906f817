"""Forward throughput, JAX (this port) vs PyTorch, same architecture, batch and image size; one run.

  python benchmarks/forward.py --arch vit_small --batch 8 --image-size 224 [--dtype float32|bfloat16]
      [--registers 4] [--iters 5] [--official-path /path/to/facebookresearch/dinov2]

PyTorch side: timm's `vit_*_patch14_dinov2` (or `..._reg4_dinov2`) with random init, which is the
official DINOv2 architecture; with --official-path the official `dinov2.models.vision_transformer` is
used instead. Both models are random-init (weights do not change the speed); the JAX model is built with
`img_size=--image-size` so neither side interpolates position embeddings. Each side: 2 warm-up calls
(compilation for JAX), then `--iters` timed calls; prints images/s for both and the ratio JAX / torch.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

_TIMM_NAMES = {"vit_small": "vit_small_patch14", "vit_base": "vit_base_patch14", "vit_large": "vit_large_patch14",
               "vit_giant2": "vit_giant_patch14"}


def _torch_model(arch: str, image_size: int, registers: int, official_path: str | None):
    import torch

    if official_path:
        sys.path.insert(0, official_path)
        from dinov2.models import vision_transformer as vits

        kw = dict(patch_size=14, img_size=image_size, init_values=1.0, block_chunks=0,
                  num_register_tokens=registers)
        if arch == "vit_giant2":
            kw["ffn_layer"] = "swiglufused"
        return getattr(vits, arch)(**kw).eval(), "official dinov2 code"
    # timm pulls torchvision, whose CUDA build fails to import next to CPU torch unless these ops exist
    for op in ("nms", "qnms"):
        try:
            torch.library.define(f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        except Exception:
            pass  # already defined by a working torchvision
    import timm

    name = _TIMM_NAMES[arch] + (f"_reg{registers}" if registers else "") + "_dinov2"
    return timm.create_model(name, pretrained=False, img_size=image_size).eval(), f"timm {name}"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _time(fn, iters: int) -> float:
    fn()
    fn()  # warm-up (JAX: compile; torch: allocator)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="vit_small", choices=sorted(_TIMM_NAMES))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--registers", type=int, default=0, choices=[0, 4])
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--attn-impl", default=None,
                   help="JAX attention backend (auto|xla|cudnn|pallas); default: auto for bfloat16 (cuDNN flash "
                        "attention on GPU), xla for float32 (JAX's cuDNN kernel has no float32)")
    p.add_argument("--official-path", default=None, help="checkout of facebookresearch/dinov2 to use instead of timm")
    args = p.parse_args(argv)
    if args.attn_impl is None:
        args.attn_impl = "auto" if args.dtype == "bfloat16" else "xla"
    if args.image_size % 14:
        raise SystemExit(f"--image-size must be a multiple of 14, got {args.image_size}")

    import jax
    import jax.numpy as jnp
    import torch
    from flax import nnx

    from dinov2_jax.models.vision_transformer import build_backbone

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, args.image_size, args.image_size, 3)).astype(np.float32)

    # ---- JAX
    model = build_backbone(args.arch, patch_size=14, img_size=args.image_size, init_values=1.0,
                           num_register_tokens=args.registers, dtype=args.dtype, attn_impl=args.attn_impl,
                           ffn_layer="swiglufused" if args.arch == "vit_giant2" else "mlp",
                           interpolate_antialias=bool(args.registers),
                           interpolate_offset=0.0 if args.registers else 0.1, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    fwd = jax.jit(lambda s, im: nnx.merge(graphdef, s)(im))
    xj = jax.device_put(jnp.asarray(x))
    jax_s = _time(lambda: fwd(state, xj).block_until_ready(), args.iters)

    # ---- torch
    tmodel, tname = _torch_model(args.arch, args.image_size, args.registers, args.official_path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tmodel = tmodel.to(device)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(device)

    def torch_fwd():
        with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16,
                                                     enabled=args.dtype == "bfloat16"):
            out = tmodel(xt)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    torch_s = _time(torch_fwd, args.iters)

    jax_ips, torch_ips = args.batch / jax_s, args.batch / torch_s
    print(f"model {args.arch}/14 reg{args.registers}, batch {args.batch}, {args.image_size}px, {args.dtype}, "
          f"JAX attention {model.attn_impl}, "
          f"{args.iters} timed iters after 2 warm-up")
    print(f"hardware: {jax.devices()[0].device_kind} ({jax.default_backend()}), {_cpu_name()}, "
          f"{os.cpu_count()} CPU threads; torch {torch.__version__} threads {torch.get_num_threads()}, jax {jax.__version__}")
    print(f"JAX   : {jax_s * 1e3:8.1f} ms/batch  {jax_ips:8.2f} images/s")
    print(f"torch : {torch_s * 1e3:8.1f} ms/batch  {torch_ips:8.2f} images/s  ({tname})")
    print(f"ratio JAX/torch throughput: {jax_ips / torch_ips:.3f}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
