"""Multi-crop augmentation throughput per CPU core: this port vs the official torchvision recipe; one run.

  python benchmarks/data.py [--n-images 64] [--global-size 224] [--local-size 96] [--local-number 8]
      [--image-size 500x375] [--with-collate] [--device-mode [--device-batch 8]]

Both sides run in this single process with one thread (torch.set_num_threads(1)), so images/s is per
core. Inputs: JPEG bytes of scikit-image's sample photos resized to --image-size (ImageNet-like size),
decoded with PIL (`open(...).convert("RGB")`) inside the timed loop on both sides; the two sides
alternate over --rounds rounds (disjoint image subsets) and the median round is reported. Ours:
`DataAugmentationDINO` (PIL + numpy/scipy, float32 HWC output). Official: torchvision transforms
composed as spec 5.1 (effective blur probabilities 0 / 0.9 / 0.5, solarize 0.2 on global 2), written
here, CHW torch tensors. --with-collate also times our full per-sample grain path + collate with masks
(batch 8) in the same process.
--device-mode (crops.photometric_on_device) also times, in the same alternating rounds, the host part of
that mode (decode + crop/flip + all random draws -> uint8 crops + params) per core, and then the
jitted device function `photometric_augment` on XLA's default backend for the crops of --device-batch
images (2B global + nB local crops; median of 5 calls after compilation; on CPU XLA uses all cores).
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import os
import platform
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _images(n, size):
    import skimage.data

    names = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
             "retina", "colorwheel")
    out = []
    for i in range(n):
        arr = getattr(skimage.data, names[i % len(names)])()
        img = Image.fromarray(arr).convert("RGB").resize(size, Image.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _decode(b):
    with Image.open(io.BytesIO(b)) as im:
        return im.convert("RGB")


def _torchvision_recipe(global_size, local_size, local_number):
    import torch

    for op in ("nms", "qnms"):  # CUDA torchvision wheel next to CPU torch: define the op schemas first
        try:
            torch.library.define(f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        except Exception:
            pass
    import torchvision.transforms as T

    bic = T.InterpolationMode.BICUBIC
    color = T.Compose([T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8), T.RandomGrayscale(p=0.2)])
    norm = T.Compose([T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])

    def blur(p):
        return T.RandomApply([T.GaussianBlur(kernel_size=9, sigma=(0.1, 2.0))], p=p)

    geo_g = T.Compose([T.RandomResizedCrop(global_size, scale=(0.32, 1.0), interpolation=bic), T.RandomHorizontalFlip(0.5)])
    geo_l = T.Compose([T.RandomResizedCrop(local_size, scale=(0.05, 0.32), interpolation=bic), T.RandomHorizontalFlip(0.5)])
    g1 = T.Compose([color, blur(0.0), norm])
    g2 = T.Compose([color, blur(0.9), T.RandomSolarize(threshold=128, p=0.2), norm])
    loc = T.Compose([color, blur(0.5), norm])

    def recipe(img):
        return {"global_crops": [g1(geo_g(img)), g2(geo_g(img))],
                "local_crops": [loc(geo_l(img)) for _ in range(local_number)]}

    return recipe, torch


def _time(fn, items, warmup=2):
    for x in items[:warmup]:
        fn(x)
    t = time.perf_counter()
    for x in items:
        fn(x)
    return len(items) / (time.perf_counter() - t)


def _time_device_function(aug_dev, data, rng, calls=5):
    """Median wall time of the jitted photometric_augment on the crops of len(data) images."""
    import jax
    import jax.numpy as jnp

    from dinov2_jax.data.device_augment import photometric_augment

    outs = [aug_dev(_decode(b), rng) for b in data]
    fn = jax.jit(photometric_augment)
    args = []
    for part in ("global", "local"):
        crops = jnp.asarray(np.concatenate([o[f"{part}_crops"] for o in outs]))
        params = {k: jnp.asarray(np.concatenate([o[f"{part}_photometric"][k] for o in outs]))
                  for k in outs[0][f"{part}_photometric"]}
        args.append((crops, params))
    for a in args:  # compile
        fn(*a).block_until_ready()
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        for a in args:
            fn(*a).block_until_ready()
        times.append(time.perf_counter() - t)
    dt = float(np.median(times))
    print(f"device function on {jax.default_backend()} ({jax.devices()[0].device_kind}), {len(data)} images "
          f"({args[0][0].shape[0]} global + {args[1][0].shape[0]} local crops): {dt * 1e3:8.1f} ms/batch, "
          f"{len(data) / dt:7.2f} images/s")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-images", type=int, default=64)
    ap.add_argument("--global-size", type=int, default=224)
    ap.add_argument("--local-size", type=int, default=96)
    ap.add_argument("--local-number", type=int, default=8)
    ap.add_argument("--image-size", default="500x375")
    ap.add_argument("--rounds", type=int, default=4, help="alternating timing rounds (median reported)")
    ap.add_argument("--with-collate", action="store_true")
    ap.add_argument("--device-mode", action="store_true",
                    help="also time the host part of crops.photometric_on_device and the device function")
    ap.add_argument("--device-batch", type=int, default=8, help="images per timed device-function call")
    args = ap.parse_args()
    size = tuple(int(v) for v in args.image_size.split("x"))

    from dinov2_jax.data.augmentations import DataAugmentationDINO

    recipe, torch = _torchvision_recipe(args.global_size, args.local_size, args.local_number)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = _images(args.n_images, size)
    aug = DataAugmentationDINO(local_crops_number=args.local_number, global_crops_size=args.global_size,
                               local_crops_size=args.local_size)
    rng = np.random.default_rng(0)

    # Alternate rounds between the two sides so load changes on a shared machine hit both equally;
    # report the median round of each.
    aug_dev = dataclasses.replace(aug, photometric_on_device=True)
    ours_r, official_r, dev_r = [], [], []
    for r in range(args.rounds):
        chunk = data[r::args.rounds] if len(data) >= 2 * args.rounds else data
        ours_r.append(_time(lambda b: aug(_decode(b), rng), chunk, warmup=1 if r == 0 else 0))
        official_r.append(_time(lambda b: recipe(_decode(b)), chunk, warmup=1 if r == 0 else 0))
        if args.device_mode:
            dev_r.append(_time(lambda b: aug_dev(_decode(b), rng), chunk, warmup=1 if r == 0 else 0))
    ours, official = float(np.median(ours_r)), float(np.median(official_r))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible; 1 thread each side")
    print(f"crops: 2 x {args.global_size}^2 + {args.local_number} x {args.local_size}^2 from {size[0]}x{size[1]} JPEGs, "
          f"{args.n_images} images")
    print(f"ours (PIL+numpy, DataAugmentationDINO):   {ours:7.2f} images/s per core")
    print(f"official torchvision recipe (spec 5.1):   {official:7.2f} images/s per core")
    print(f"ratio ours / official:                    {ours / official:7.3f}   "
          f"(median of {args.rounds} alternating rounds; per-round ratios "
          f"{', '.join(f'{a / b:.2f}' for a, b in zip(ours_r, official_r))})")
    if args.device_mode:
        host_dev = float(np.median(dev_r))
        print(f"photometric_on_device, host part (uint8 + params): {host_dev:7.2f} images/s per core "
              f"({host_dev / ours:.2f}x the full host path)")
        _time_device_function(aug_dev, data[:args.device_batch], rng)
    if args.with_collate:
        import random

        from dinov2_jax.data.masking import MaskingGenerator, collate

        grid = args.global_size // 14
        gen = MaskingGenerator((grid, grid), max_num_patches=0.5 * grid * grid)
        B = 8
        t = time.perf_counter()
        for k in range(0, len(data) - B + 1, B):
            collate([aug(_decode(b), rng) for b in data[k:k + B]], mask_generator=gen, rng=random.Random(k))
        n = (len(data) // B) * B
        print(f"ours incl. collate+masks (p14, B={B}):       {n / (time.perf_counter() - t):7.2f} images/s per core")


if __name__ == "__main__":
    main()
