"""Evaluation feature extraction throughput (images/s), JAX (this port) vs timm, ViT-S/14 on CPU by default.

  python benchmarks/eval_extraction.py [--arch vit_small] [--dataset demo:val] [--max-samples 96]
      [--batch-size 32] [--image-size 224] [--num-workers 0]

Both sides read the same labelled dataset through the same eval loader (`make_eval_loader`: decode,
resize 256 bicubic, center crop 224, normalise; Grain workers with --num-workers) and run a random-init
backbone (weights do not change the speed): JAX through `dinov2_jax.eval.features.extract_features`
(jitted, what every evaluator uses; timed on its second pass, the first one compiles), PyTorch through
timm's `vit_*_patch14_dinov2` (`torch.inference_mode`, one warm-up batch). Prints images/s end to end
(decoding included) for both and their ratio.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="vit_small")
    p.add_argument("--dataset", default="demo:val")
    p.add_argument("--max-samples", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--num-workers", type=int, default=0)
    args = p.parse_args(argv)

    import jax
    import torch
    from flax import nnx

    from dinov2_jax.data.pipeline import make_eval_loader
    from dinov2_jax.eval.features import extract_features, load_labelled_source, make_feature_fn
    from dinov2_jax.models.vision_transformer import build_backbone
    from forward import _cpu_name, _torch_model

    resize = args.image_size * 256 // 224
    model = build_backbone(args.arch, patch_size=14, img_size=args.image_size, init_values=1.0, attn_impl="xla",
                           rngs=nnx.Rngs(0))
    fn = make_feature_fn(model)
    kw = dict(batch_size=args.batch_size, image_size=args.image_size, resize_size=resize,
              max_samples=args.max_samples, num_workers=args.num_workers, progress=False)
    extract_features(fn, args.dataset, **kw)  # compiles
    t0 = time.perf_counter()
    feats, _ = extract_features(fn, args.dataset, **kw)
    jax_ips = len(feats) / (time.perf_counter() - t0)

    tmodel, tname = _torch_model(args.arch, args.image_size, 0, None)
    src = load_labelled_source(args.dataset, max_samples=args.max_samples)
    loader = make_eval_loader(src, args.batch_size, resize_size=resize, crop_size=args.image_size,
                              process_index=0, process_count=1, num_workers=args.num_workers)

    def torch_pass():
        n = 0
        for ims, _, valid in loader:
            with torch.inference_mode():
                tmodel(torch.from_numpy(np.ascontiguousarray(np.asarray(ims).transpose(0, 3, 1, 2))))
            n += int(np.asarray(valid).sum())
        return n

    with torch.inference_mode():  # warm-up batch
        tmodel(torch.zeros(args.batch_size, 3, args.image_size, args.image_size))
    t0 = time.perf_counter()
    n = torch_pass()
    torch_ips = n / (time.perf_counter() - t0)
    print(f"{_cpu_name()}, {os.cpu_count()} CPUs, jax {jax.__version__} ({jax.default_backend()}), "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    print(f"{args.arch}/14 {args.image_size}px, {len(feats)} images of {args.dataset}, batch {args.batch_size}, "
          f"{args.num_workers} decode workers")
    print(f"JAX extract_features : {jax_ips:.1f} images/s")
    print(f"{tname:21s}: {torch_ips:.1f} images/s")
    print(f"ratio JAX / torch    : {jax_ips / torch_ips:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
