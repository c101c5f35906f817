#!/usr/bin/env python
"""PyTorch reference for benchmarks/train_step.py --mode backbone: the same ViT forward + backward
(loss = mean of the squared cls token) + AdamW step, on the same device, for a side-by-side ratio.

The model is timm's DINOv2 ViT (`vit_{small,base,large,giant}_patch14_dinov2`, random init, LayerScale
1e-5, SwiGLU for giant) built at the benchmark's patch / image size; attention is
`F.scaled_dot_product_attention` (timm's fused attention: flash / memory-efficient kernels on GPU).
bf16 = `torch.autocast` with float32 parameters (as the JAX side: fp32 params, bf16 compute).

    python benchmarks/train_step_torch.py --arch vit_large --patch-size 14 --batch-size 32 --dtype bfloat16
    python benchmarks/train_step_torch.py --arch tiny --img-size 56 --batch-size 4 --steps 3   # CPU smoke test

FLOPs, MFU and the RESULT line are computed exactly as in train_step.py (shared functions).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step import ARCHS, add_common_args, backbone_step_flops, summarize  # noqa: E402

TIMM_NAMES = {"vit_small": "vit_small_patch14_dinov2", "vit_base": "vit_base_patch14_dinov2",
              "vit_large": "vit_large_patch14_dinov2", "vit_giant2": "vit_giant_patch14_dinov2"}


def _import_timm():
    import torch

    # timm imports torchvision; a torchvision wheel built for another torch fails at import with
    # "operator torchvision::nms does not exist" unless the op schemas exist (we never call them).
    for name, schema in (("torchvision::nms", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"),
                         ("torchvision::qnms", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")):
        try:
            torch.library.define(name, schema)
        except RuntimeError:
            pass  # already defined by a working torchvision
    import timm

    return timm


def build_model(args):
    timm = _import_timm()
    dim, depth, heads, ffn = ARCHS[args.arch]
    kw = dict(pretrained=False, img_size=args.img_size, patch_size=args.patch_size, num_classes=0,
              reg_tokens=args.registers, drop_path_rate=0.0)
    if args.arch == "tiny":
        return timm.create_model("vit_small_patch14_dinov2", embed_dim=dim, depth=depth, num_heads=heads, **kw)
    return timm.create_model(TIMM_NAMES[args.arch], **kw)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)
    ap.add_argument("--device", default=None, help="cuda | cpu (default: cuda if available)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    args = ap.parse_args(argv)
    if args.img_size % args.patch_size:
        ap.error(f"--img-size {args.img_size} must be a multiple of --patch-size {args.patch_size}")

    import torch

    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = build_model(args).to(dev).train()
    if args.compile:
        model = torch.compile(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.04,
                            **({"fused": True} if dev.type == "cuda" else {}))
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=dev)
    amp = torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")

    def run():
        with amp:
            cls = model.forward_features(x)[:, 0]  # pre-head, post-norm cls token (x_norm_clstoken)
        loss = cls.float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return loss

    t0 = time.perf_counter()
    run()
    compile_s = time.perf_counter() - t0
    for _ in range(args.warmup):
        run()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    kind = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    peak_mem = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None
    flops = backbone_step_flops(args.arch, args.img_size, args.patch_size, args.batch_size, args.registers)
    return summarize("torch", kind, args, times, flops, args.batch_size, peak_mem,
                     {"mode": "backbone", "attn": "sdpa", "compile": args.compile, "first_step_s": compile_s,
                      "torch": torch.__version__})


if __name__ == "__main__":
    main()
