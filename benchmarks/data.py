"""Multi-crop augmentation throughput per CPU core: this port vs the official torchvision recipe; one run.

  python benchmarks/data.py [--n-images 64] [--global-size 224] [--local-size 96] [--local-number 8]
      [--image-size 500x375] [--with-collate] [--device-mode [--device-batch 8]]

Both sides run in this single process with one thread (torch.set_num_threads(1)), so images/s is per
core. Inputs: JPEG bytes of scikit-image's sample photos resized to --image-size (ImageNet-like size),
decoded with PIL (`open(...).convert("RGB")`) inside the timed loop on both sides; the two sides
alternate over --rounds rounds (disjoint image subsets) and the median round is reported. Ours:
`DataAugmentationDINO` (PIL + numpy/scipy, float32 HWC output). Official: torchvision transforms
composed as in the official `dinov2/data/augmentations.py` (effective blur probabilities 0 / 0.9 / 0.5, solarize 0.2 on global 2), written
here, CHW torch tensors. --with-collate also times our full per-sample grain path + collate with masks
(batch 8) in the same process.
--device-mode (crops.photometric_on_device) also times, in the same alternating rounds, the host part of
that mode (decode + crop/flip + all random draws -> uint8 crops + params) per core, and then the
jitted device function `photometric_augment` on XLA's default backend for the crops of --device-batch
images (2B global + nB local crops; median of 5 calls after compilation; on CPU XLA uses all cores).

--scaling [--sizes 1000,100000,1000000] [--max-files 100000] [--workdir DIR] [--reads 2000]: start-up
time, per-worker memory and read throughput of the folder:, list: and shards: sources as the dataset
grows. Synthetic tiny JPEGs (16x16, 64 distinct images cycled); for each size N: a class folder of N
files (only up to --max-files: above it the folder is measured index-only, a FolderSource holding N
synthetic paths, as no file system walk of 10^6 files is run here), a list file of N lines (above
--max-files its lines cycle over the folder's files), and the shards packed from the folder or list
(`dinov2_jax.data.pack`, 2 processes, 10^4 images per shard), read with the record index in the
shard files and in RAM (`ShardSource(index_in_memory=...)`). Each measurement is a fresh process:
start-up = `make_source(spec)` wall time (list: the first start builds the offsets index, later ones
reuse it; both shown). Worker = a second fresh process standing in for a Grain worker: it unpickles the
source (what `mp_prefetch` sends each worker), reads + decodes --reads images in a seeded random order
over the whole dataset; its RSS (VmRSS) after the reads, the growth over its RSS after the imports and
the anonymous part of that growth (RssAnon: not file-backed pages, which a memory-mapped index shares
between workers through the page cache) are reported with the images/s and the pickled source size. The files sit in the page cache (just
written), so images/s shows the per-read overhead of each source, not a network file system.
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
    ap.add_argument("--scaling", action="store_true", help="source start-up / memory / reads vs dataset size")
    ap.add_argument("--sizes", default="1000,100000,1000000", help="--scaling: dataset sizes")
    ap.add_argument("--max-files", type=int, default=100000, help="--scaling: largest folder written as files")
    ap.add_argument("--workdir", default=None, help="--scaling: keep the data here (default: a temp dir, removed)")
    ap.add_argument("--reads", type=int, default=2000, help="--scaling: random reads per worker measurement")
    ap.add_argument("--_child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        return _scaling_child(args._child[0], args._child[1], int(args._child[2]))
    if args.scaling:
        return scaling_main(args)
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
    print(f"official torchvision recipe:              {official:7.2f} images/s per core")
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


# ----------------------------------------------------------------------------- source scaling (--scaling)


def _rss_mb(field: str = "VmRSS") -> float:
    """VmRSS: all resident memory; RssAnon: the process's own (not file-backed, not shared) part."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _scaling_child(mode, arg, reads):
    """One fresh process: `start` (make the source, pickle it to arg+'.pkl') or `worker` (unpickle, read)."""
    import json
    import pickle

    import dinov2_jax.data.pipeline  # noqa: F401  (grain etc. are loaded in a real worker too)
    from dinov2_jax.data.sources import FolderSource, make_source

    rss0, anon0 = _rss_mb(), _rss_mb("RssAnon")
    if mode == "start":
        spec, pkl = arg.split("|")
        t = time.perf_counter()
        if spec.startswith("folder-index:"):  # index only: N synthetic paths, no files
            _, n, root = spec.split(":", 2)
            src = object.__new__(FolderSource)
            src.root, src.classes = root, [f"c{j:03d}" for j in range(100)]
            src.files = [os.path.join(root, f"c{i % 100:03d}", f"{i:07d}.jpg") for i in range(int(n))]
            src.labels = np.arange(int(n), dtype=np.int64) % 100
            startup = None
        elif spec.startswith(("shards-mem:", "shards-file:")):
            from dinov2_jax.data.shards import ShardSource

            kind, root = spec.split(":", 1)
            src = ShardSource(root, index_in_memory=kind == "shards-mem")
            startup = time.perf_counter() - t
        else:
            src = make_source(spec)
            startup = time.perf_counter() - t
        with open(pkl, "wb") as f:
            pickle.dump(src, f)
        print(json.dumps({"startup_s": startup, "n": len(src), "pickle_bytes": os.path.getsize(pkl),
                          "rss_mb": _rss_mb(), "rss_delta_mb": _rss_mb() - rss0}))
    else:
        with open(arg, "rb") as f:
            src = pickle.load(f)
        order = np.random.default_rng(0).integers(0, len(src), reads)
        t = time.perf_counter()
        ok = sum(src[int(i)] is not None for i in order)
        dt = time.perf_counter() - t
        print(json.dumps({"images_per_s": ok / dt if reads else None, "ok": ok, "rss_mb": _rss_mb(),
                          "rss_delta_mb": _rss_mb() - rss0, "anon_delta_mb": _rss_mb("RssAnon") - anon0}))


def _run_child(*args):
    import json
    import subprocess

    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--_child", *map(str, args)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _tiny_jpegs(k=64, size=16):
    out = []
    yy, xx = np.mgrid[0:size, 0:size]
    for j in range(k):
        arr = np.stack([(xx * (j + 3)) % 256, (yy * (2 * j + 1)) % 256, np.full_like(xx, 4 * j)], -1)
        buf = io.BytesIO()
        Image.fromarray(arr.astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _make_folder(root, n, pool):
    if os.path.exists(os.path.join(root, ".complete")):
        return
    for j in range(min(n, 100)):
        os.makedirs(os.path.join(root, f"c{j:03d}"), exist_ok=True)
    for i in range(n):
        with open(os.path.join(root, f"c{i % 100:03d}", f"{i:07d}.jpg"), "wb") as f:
            f.write(pool[i % len(pool)])
    open(os.path.join(root, ".complete"), "w").close()


def scaling_main(args):
    import shutil
    import tempfile

    from dinov2_jax.data.pack import pack
    from dinov2_jax.data.sources import FolderSource

    sizes = [int(float(v)) for v in args.sizes.split(",")]
    work = args.workdir or tempfile.mkdtemp(prefix="dinov2_jax_scaling_")
    os.makedirs(work, exist_ok=True)
    pool = _tiny_jpegs()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; workdir {work}; "
          f"{len(pool)} distinct 16x16 JPEGs of {int(np.mean([len(b) for b in pool]))} bytes; {args.reads} reads")
    biggest_folder = None
    rows = []
    for n in sorted(sizes):
        t = time.perf_counter()
        folder = os.path.join(work, f"folder_{n}")
        if n <= args.max_files:
            _make_folder(folder, n, pool)
            biggest_folder = folder
            files = FolderSource(folder).files
            labels = [int(os.path.basename(os.path.dirname(f))[1:]) for f in files]
        else:
            if biggest_folder is None:
                raise SystemExit("--sizes needs one size <= --max-files (its files back the bigger list)")
            base = FolderSource(biggest_folder)
            files = [base.files[i % len(base.files)] for i in range(n)]
            labels = [int(base.labels[i % len(base.files)]) for i in range(n)]
        lst = os.path.join(work, f"list_{n}.txt")
        if not os.path.exists(lst):
            with open(lst + ".tmp", "w") as f:
                f.writelines(f"{p}\t{lab}\n" for p, lab in zip(files, labels))
            os.replace(lst + ".tmp", lst)
        del files, labels
        shards = os.path.join(work, f"shards_{n}")
        tp = time.perf_counter()
        pack(f"folder:{folder}" if n <= args.max_files else f"list:{lst}", shards, shard_size=10000, workers=2)
        tp = time.perf_counter() - tp
        for stale in (lst + ".offsets.npy", lst + ".offsets.json"):  # time the index build from scratch
            if os.path.exists(stale):
                os.remove(stale)
        print(f"N={n}: data ready in {time.perf_counter() - t:.1f} s (pack {tp:.1f} s)", flush=True)

        specs = [("folder", f"folder:{folder}" if n <= args.max_files else f"folder-index:{n}:{folder}"),
                 ("list (first start: builds index)", f"list:{lst}"), ("list", f"list:{lst}"),
                 ("shards, index in file", f"shards-file:{shards}"), ("shards, index in RAM", f"shards-mem:{shards}")]
        for name, spec in specs:
            pkl = os.path.join(work, "source.pkl")
            st = _run_child("start", f"{spec}|{pkl}", 0)
            wk = _run_child("worker", pkl, 0 if spec.startswith("folder-index") else args.reads)
            rows.append((n, name, st, wk))
            ips = "-" if wk["images_per_s"] is None else f"{wk['images_per_s']:.0f}"
            sus = "- (index only)" if st["startup_s"] is None else f"{st['startup_s']:.3f}"
            print(f"  {name:34s} start-up {sus:>14s} s | pickle {st['pickle_bytes'] / 1e6:8.2f} MB | "
                  f"main +{st['rss_delta_mb']:7.1f} MB | worker RSS {wk['rss_mb']:7.1f} MB "
                  f"(+{wk['rss_delta_mb']:6.1f} MB, anon +{wk['anon_delta_mb']:6.1f} MB) | {ips:>6s} images/s",
                  flush=True)
    print("\n| N | source | start-up s | pickled source MB | worker RSS MB (growth; of it anonymous) | "
          "images/s (1 worker) |")
    print("|---|---|---|---|---|---|")
    for n, name, st, wk in rows:
        sus = "— (index only)" if st["startup_s"] is None else f"{st['startup_s']:.3f}"
        ips = "—" if wk["images_per_s"] is None else f"{wk['images_per_s']:.0f}"
        print(f"| {n:.0e} | {name} | {sus} | {st['pickle_bytes'] / 1e6:.2f} | {wk['rss_mb']:.0f} "
              f"(+{wk['rss_delta_mb']:.1f}; +{wk['anon_delta_mb']:.1f}) | {ips} |")
    if not args.workdir:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
