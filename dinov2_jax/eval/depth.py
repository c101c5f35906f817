"""Linear monocular depth on a frozen DINOv2 backbone (the official `_ld` head, `dinov2/hub/depthers.py`).

  python -m dinov2_jax.eval.depth --weights W --data ROOT --layout nyu --image-size 476 --iters 4000 --out-dir depth_out

Trains the 256-bin classification-regression head (`dinov2_jax.models.heads.depth`) on the frozen backbone
(official block indices for hub sizes, else the last 4 / --out-index), with the scale-invariant log loss
(AdaBins SigLoss as `dinov2/eval/depth/models/losses/sigloss.py`, on valid pixels), AdamW + linear decay.
Reports abs-rel, RMSE and delta < 1.25 (per image over valid pixels min_depth < gt <= max_depth, then averaged)
and writes out_dir/{metrics.json, head.npz (official keys), depth.png (input / prediction / target)}.
Layouts:
  nyu / kitti: ROOT/{train,val}.txt, lines "rgb_path depth_path [focal]" relative to ROOT (BTS-style lists);
               16-bit PNG depth / 1000 (nyu) or / 256 (kitti); range (0.001, 10) / (0.001, 80).
  folder:      ROOT/{train,val}/images/* + ROOT/{train,val}/depth/<stem>.npy (metres, float) or .png
               (16-bit, / --depth-scale); --max-depth required.
Images and depth maps are resized to --image-size square (bicubic / nearest; 0 = invalid); metrics count the
pixels of the standard evaluation crop (--eval-crop: Eigen for nyu, Garg for kitti). Without --augment the
training features are computed once and cached when they fit in --cache-gb (else recomputed at every step);
--augment trains on random views (rotation +-2.5 deg, flip, gamma/brightness/colour jitter, as the depth
toolbox's NYU/KITTI pipeline; `dinov2_jax/eval/dense_augment.py`), running the backbone at every step.
Validation streams batch by batch; --tta-flip averages each prediction with the un-mirrored prediction of the
mirrored image (the toolbox's flip test).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from functools import partial

import jax.numpy as jnp
import numpy as np
from flax import nnx

from dinov2_jax.eval import dense
from dinov2_jax.eval.dense_augment import depth_view
from dinov2_jax.models.heads.depth import LinearDepthHead, depth_features, head_to_state_dict, official_out_index
from dinov2_jax.models.heads.spatial import resize_bilinear

logger = logging.getLogger("dinov2_jax.eval.depth")

LAYOUTS = {"nyu": dict(scale=1000.0, range=(0.001, 10.0)), "kitti": dict(scale=256.0, range=(0.001, 80.0)),
           "folder": dict(scale=None, range=None)}


# ---- metrics / loss -------------------------------------------------------------------------------
# The standard evaluation crops (top, bottom, left, right) as fractions of the frame, so that they apply at any
# evaluation size: Eigen et al.'s NYU-v2 crop, rows 45:471 and columns 41:601 of the 480 x 640 frame, and
# Garg et al.'s KITTI crop, the fractions used by the BTS / AdaBins evaluation code (whose toolbox the official
# depth evaluation builds on). Pixels outside the crop do not count.
EVAL_CROPS = {"eigen": (45 / 480, 471 / 480, 41 / 640, 601 / 640),
              "garg": (0.40810811, 0.99189189, 0.03594771, 0.96405229)}
LAYOUT_CROPS = {"nyu": "eigen", "kitti": "garg", "folder": "none"}


def eval_crop_mask(shape: tuple[int, int], crop: str) -> np.ndarray:
    """bool [H, W]: the pixels inside the named evaluation crop ("none": all)."""
    h, w = shape
    mask = np.zeros((h, w), bool)
    if crop == "none":
        mask[:] = True
        return mask
    if crop not in EVAL_CROPS:
        raise ValueError(f"unknown evaluation crop {crop!r}; choose one of {['none', *EVAL_CROPS]}")
    t, b, lf, r = EVAL_CROPS[crop]
    mask[int(t * h):int(b * h), int(lf * w):int(r * w)] = True
    return mask


def depth_metric_rows(pred, gt, min_depth: float, max_depth: float, crop: str = "none") -> list[tuple[float, float, float]]:
    """pred, gt [N, H, W] -> per image (abs_rel, rmse, delta1) over valid pixels (min_depth < gt <= max_depth,
    inside the evaluation crop); images without a valid pixel are skipped."""
    rows = []
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    inside = eval_crop_mask(gt.shape[1:3], crop)
    for p, g in zip(pred, gt):
        v = (g > min_depth) & (g <= max_depth) & inside
        if not v.any():
            continue
        p, g = p[v], g[v]
        rows.append((np.mean(np.abs(p - g) / g), np.sqrt(np.mean((p - g) ** 2)), np.mean(np.maximum(p / g, g / p) < 1.25)))
    return rows


def summarize_rows(rows) -> dict:
    """Per-image metric rows -> their means {"abs_rel", "rmse", "delta1", "n_images"}."""
    if not rows:
        raise ValueError("no image has a valid depth pixel (check --depth-scale / --max-depth)")
    r = np.mean(rows, axis=0)
    return {"abs_rel": float(r[0]), "rmse": float(r[1]), "delta1": float(r[2]), "n_images": len(rows)}


def depth_metrics(pred, gt, min_depth: float, max_depth: float) -> dict:
    """pred, gt [N, H, W] -> mean over images of abs_rel, rmse, delta1 (valid: min_depth < gt <= max_depth)."""
    return summarize_rows(depth_metric_rows(pred, gt, min_depth, max_depth))


def sig_loss(pred, gt, max_depth: float | None = None, eps: float = 1e-3):
    """Scale-invariant log loss on valid pixels (gt > 0, <= max_depth): sqrt(var(g) + 0.15 mean(g)^2),
    g = log(pred + eps) - log(gt + eps), var unbiased (as torch.var)."""
    valid = gt > 0
    if max_depth is not None:
        valid = valid & (gt <= max_depth)
    n = jnp.maximum(valid.sum(), 2)
    g = jnp.where(valid, jnp.log(pred + eps) - jnp.log(jnp.where(valid, gt, 1.0) + eps), 0.0)
    mean = g.sum() / n
    var = jnp.where(valid, (g - mean) ** 2, 0.0).sum() / (n - 1)
    return jnp.sqrt(var + 0.15 * mean ** 2)


# ---- data -----------------------------------------------------------------------------------------
def dataset_pairs(root: str, layout: str, split: str) -> list[tuple[str, str]]:
    if layout in ("nyu", "kitti"):
        lst = os.path.join(root, f"{split}.txt")
        if not os.path.isfile(lst):
            raise FileNotFoundError(f"{layout} layout: {lst!r} not found (lines 'rgb_path depth_path [focal]')")
        pairs = []
        with open(lst) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[1] != "None":  # BTS lists mark frames without depth "None"
                    pairs.append((os.path.join(root, parts[0].lstrip("/")), os.path.join(root, parts[1].lstrip("/"))))
        missing = [p for pair in pairs for p in pair if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"{len(missing)} files listed in {lst!r} not found, e.g. {missing[:2]}")
        return pairs
    if layout == "folder":
        return dense.match_pairs(os.path.join(root, split, "images"), os.path.join(root, split, "depth"), target_ext=None)
    raise ValueError(f"unknown layout {layout!r}; choose one of {sorted(LAYOUTS)}")


def load_depth(path: str, size: int, scale: float | None) -> np.ndarray:
    """Depth file -> float32 metres [size, size] (nearest resize). .npy: metres; PNG: value / scale."""
    from PIL import Image

    if path.endswith(".npy"):
        d = np.load(path).astype(np.float32)
        im = Image.fromarray(d, mode="F")
    else:
        if scale is None:
            raise SystemExit("PNG depth needs --depth-scale (e.g. 1000 for NYU, 256 for KITTI)")
        with Image.open(path) as f:
            im = Image.fromarray(np.asarray(f).astype(np.float32) / scale, mode="F")
    return np.asarray(im.resize((size, size), Image.NEAREST), np.float32)


# ---- training -------------------------------------------------------------------------------------
def train_head(batches, *, min_depth: float, max_depth: float, iters: int = 1000, batch_size: int = 8,
               lr: float = 1e-3, weight_decay: float = 1e-4, seed: int = 0, log_every: int = 100) -> LinearDepthHead:
    """Fit a LinearDepthHead (SigLoss, AdamW, linear decay). batches: `dense.TrainBatches` (idx [b] ->
    (features [b, h, w, C], depth [b, H, W]))."""
    head = LinearDepthHead(batches.feature_shape[-1], min_depth=min_depth, max_depth=max_depth, rngs=nnx.Rngs(seed))
    size = batches.target_shape[:2]
    loss = lambda h, f, d: sig_loss(resize_bilinear(h(f)[..., None], size)[..., 0], d, max_depth)
    return dense.fit_head(head, batches, loss, iters=iters, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                          seed=seed, log_every=log_every, loss_name="sigloss")


@partial(nnx.jit, static_argnames="size")
def _depth(head, feats, size):
    return resize_bilinear(jnp.clip(head(feats), head.min_depth, head.max_depth)[..., None], size)[..., 0]


def predict(head: LinearDepthHead, feats, size, batch_size: int = 8) -> np.ndarray:
    """Features -> depth [N, H, W]: clamped to the head's range, resized bilinearly (hub inference)."""
    return np.concatenate([np.asarray(_depth(head, jnp.asarray(feats[s:s + batch_size]), tuple(size)))
                           for s in range(0, len(feats), batch_size)])


def save_picture(images, pred, gt, path: str, max_depth: float, n: int = 4) -> None:
    from dinov2_jax.visualize import denormalize

    hi = float(np.max(gt[:n])) if np.any(gt[:n] > 0) else max_depth
    rows = [[denormalize(images[i:i + 1])[0], dense.colorize_depth(pred[i], 0.0, hi), dense.colorize_depth(gt[i], 0.0, hi)]
            for i in range(min(n, len(images)))]
    dense.save_triptych(rows, path)


def load_head_weights(path: str, head_range: str | None = None) -> LinearDepthHead:
    """Official depther checkpoint (.pth) or a head.npz -> LinearDepthHead with bins over head_range."""
    from dinov2_jax.models.heads.depth import HUB_DEPTH_RANGE, head_from_state_dict

    lo, hi = (float(v) for v in head_range.split(",")) if head_range else HUB_DEPTH_RANGE
    if path.endswith(".npz"):
        with np.load(path) as d:
            return head_from_state_dict({k: d[k] for k in d.files}, lo, hi)
    from dinov2_jax.hub_depthers import load_depth_checkpoint

    return head_from_state_dict(load_depth_checkpoint(path), lo, hi)


# ---- CLI ------------------------------------------------------------------------------------------
def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m dinov2_jax.eval.depth", description="Linear depth on a frozen DINOv2 backbone")
    dense.add_model_args(p)
    p.add_argument("--data", required=True, help="dataset root")
    p.add_argument("--layout", default="nyu", choices=sorted(LAYOUTS))
    p.add_argument("--layers", type=int, default=4, choices=[1, 4], help="1: last block; 4: the official 4 blocks")
    p.add_argument("--out-index", default=None, help="comma-separated block indices (overrides --layers)")
    p.add_argument("--min-depth", type=float, default=None)
    p.add_argument("--max-depth", type=float, default=None, help="default: 10 (nyu) / 80 (kitti)")
    p.add_argument("--depth-scale", type=float, default=None, help="PNG value per metre (default 1000 nyu, 256 kitti)")
    p.add_argument("--image-size", type=int, default=476, help="square input size (multiple of the patch size)")
    p.add_argument("--iters", type=int, default=4000)
    p.add_argument("--head-weights", default=None,
                   help="evaluate this head instead of training one: official *_{nyu,kitti}_linear[4]_head.pth or "
                        "a head.npz from this CLI (blocks from its width; bins over --head-range)")
    p.add_argument("--head-range", default=None,
                   help="'min,max' of the given head's bins (default: the hub's 0.001,80 as the official builder)")
    p.add_argument("--eval-crop", default=None, choices=["none", *EVAL_CROPS],
                   help="pixels that count in the metrics: eigen (NYU-v2), garg (KITTI) or none; "
                        "default: eigen for nyu, garg for kitti, none for folder")
    p.add_argument("--tta-flip", action="store_true",
                   help="evaluate the mean of the prediction and the un-mirrored prediction of the mirrored image")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--augment", action="store_true",
                   help="train on random views (rotate +-2.5 deg, flip, colour jitter); no feature cache")
    p.add_argument("--cache-gb", type=float, default=4.0,
                   help="keep the training features in memory up to this size, else recompute them every step")
    p.add_argument("--max-samples", type=int, default=None, help="use only the first N images of each split")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = get_args_parser().parse_args(argv)
    eval_crop = args.eval_crop or LAYOUT_CROPS[args.layout]
    spec = LAYOUTS[args.layout]
    lo, hi = spec["range"] or (0.001, None)
    min_depth = args.min_depth if args.min_depth is not None else lo
    max_depth = args.max_depth if args.max_depth is not None else hi
    if max_depth is None:
        raise SystemExit("--layout folder needs --max-depth (the top of the 256 bins)")
    scale = args.depth_scale or spec["scale"]
    model = dense.load_model(args)
    dense.check_size(args.image_size, model.patch_size)
    head = None
    if args.head_weights:
        head = load_head_weights(args.head_weights, args.head_range)
        layers, rem = divmod(head.in_channels, 2 * model.embed_dim)
        if rem or (layers not in (1, 4) and not args.out_index):
            raise SystemExit(f"--head-weights {args.head_weights!r}: {head.in_channels} input channels do not fit "
                             f"1 or 4 blocks of this {model.embed_dim}-dim backbone")
        args.layers = layers
    if args.out_index:
        out_index = tuple(int(i) for i in args.out_index.split(","))
    elif args.layers == 4 and model.n_blocks not in (12, 24, 40):
        out_index = tuple(range(model.n_blocks - 4, model.n_blocks))
        logger.info("no official block indices for depth %d: using the last 4 %s", model.n_blocks, out_index)
    else:
        out_index = official_out_index(model.n_blocks, args.layers)
    feat_fn = dense.make_frozen_feature_fn(model, partial(depth_features, out_index=out_index))
    if head is not None and head.in_channels != 2 * model.embed_dim * len(out_index):
        raise SystemExit(f"--head-weights has {head.in_channels} input channels; --out-index {out_index} gives "
                         f"{2 * model.embed_dim * len(out_index)}")
    load_pair = lambda pair: (dense.load_resized_image(pair[0], (args.image_size, args.image_size)),  # noqa: E731
                              load_depth(pair[1], args.image_size, scale))
    n_train = 0
    if head is None:
        pairs = dataset_pairs(args.data, args.layout, "train")[:args.max_samples or None]
        augment = None
        if args.augment:  # KITTI's brightness range is narrower than NYU's in the toolbox configs
            brightness = (0.9, 1.1) if args.layout == "kitti" else (0.75, 1.25)
            augment = lambda pair, rng: depth_view(  # noqa: E731
                dense.load_resized_rgb(pair[0], (args.image_size, args.image_size)),
                load_depth(pair[1], args.image_size, scale), rng, brightness=brightness)
        batches = dense.TrainBatches(pairs, load_pair, feat_fn, args.batch_size, args.cache_gb, augment=augment,
                                     seed=args.seed)
        head = train_head(batches, min_depth=min_depth, max_depth=max_depth, iters=args.iters,
                          batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, seed=args.seed)
        n_train = len(pairs)
    rows, shown = [], []
    for images, feats, gt in dense.iterate_pairs(dataset_pairs(args.data, args.layout, "val")[:args.max_samples or None],
                                                 load_pair, feat_fn, args.batch_size):
        pred = predict(head, feats, gt.shape[1:3], args.batch_size)
        if args.tta_flip:  # the unmirrored features are already computed: only the mirror runs the backbone
            pred = dense.flip_average(lambda ims: predict(head, dense.batched(feat_fn, ims, args.batch_size),
                                                          gt.shape[1:3], args.batch_size), images, pred)
        rows += depth_metric_rows(pred, gt, min_depth, max_depth, eval_crop)
        shown += list(zip(images, pred, gt))[:max(0, 4 - len(shown))]
    metrics = summarize_rows(rows)
    metrics.update(layout=args.layout, eval_crop=eval_crop, out_index=list(out_index), depth_range=[min_depth, max_depth],
                   image_size=args.image_size, iters=0 if args.head_weights else args.iters, n_train=n_train,
                   augment=bool(args.augment and not args.head_weights), tta_flip=args.tta_flip,
                   head_range=[head.min_depth, head.max_depth])
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    np.savez(os.path.join(args.out_dir, "head.npz"), **head_to_state_dict(head))
    save_picture(*[np.stack(a) for a in zip(*shown)], os.path.join(args.out_dir, "depth.png"), max_depth)
    print(f"abs_rel {metrics['abs_rel']:.4f}  rmse {metrics['rmse']:.4f}  delta1 {metrics['delta1']:.4f}  "
          f"({metrics['n_images']} val images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
