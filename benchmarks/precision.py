#!/usr/bin/env python
"""One DINOv2 train step in float32 and in bfloat16 compute, on the same state and batch: the loss dict
side by side (numbers in docs/benchmarks.md, "Precision").

    python benchmarks/precision.py [--drop-path 0.0] [--images 16]

Model: the ViT-S-like step of benchmarks/scaling.py (192 dim, 4 blocks, patch 8, 2 x 32^2 + 4 x 16^2
crops, 1024 prototypes), one device. Parameters, optimizer state, centers and losses are float32 in both;
only the forward/backward compute dtype differs.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--drop-path", type=float, default=0.0)
    ap.add_argument("--images", type=int, default=16)
    args = ap.parse_args()

    import jax
    import numpy as np

    import scaling
    from dinov2_jax.train.train_step import create_train_state, make_train_step

    out = {}
    for name in ("float32", "bfloat16"):
        cfg, arch = scaling.small_config(args.drop_path)
        cfg.compute_precision.compute_dtype = name
        state = create_train_state(cfg, jax.random.key(0), arch_overrides=arch)
        batch = scaling.synthetic_batch(cfg, args.images, groups=1)
        hp = {k: np.float32(v) for k, v in scaling.HPARAMS.items()}
        _, metrics = jax.jit(make_train_step(cfg, arch_overrides=arch))(state, batch, hp)
        out[name] = {k: float(v) for k, v in metrics.items()}
    print(f"{'metric':28s} {'float32':>12s} {'bfloat16':>12s} {'rel. diff':>10s}")
    for k in out["float32"]:
        a, b = out["float32"][k], out["bfloat16"][k]
        print(f"{k:28s} {a:12.6f} {b:12.6f} {abs(a - b) / max(abs(a), 1e-12):10.2e}", flush=True)


if __name__ == "__main__":
    main()
