"""Linear semantic segmentation on a frozen DINOv2 backbone (official `dinov2/eval/segmentation`, mmseg BNHead).

  python -m dinov2_jax.eval.segmentation --weights W --data ROOT --layout ade20k --head linear \
      --image-size 518 --iters 4000 --out-dir seg_out

Trains `linear` (last block) or `ms` (last 4 blocks) BN + 1x1-conv head on the frozen backbone's patch
tokens, then reports mIoU on the validation split and writes seg_out/{metrics.json, head.npz, seg.png}.
Layouts (targets are PNG label maps):
  ade20k: ROOT/images/{training,validation}/*.jpg + ROOT/annotations/{...}/*.png; label 0 ("other") is
          ignored and 1..150 become 0..149 (mmseg reduce_zero_label); 150 classes.
  voc:    ROOT/JPEGImages/*.jpg + ROOT/SegmentationClass/*.png (palette PNGs), splits listed in
          ROOT/ImageSets/Segmentation/{train,val}.txt; 21 classes, 255 = ignore (object borders).
  folder: ROOT/{train,val}/images/* + ROOT/{train,val}/masks/*.png (same stem); --num-classes required,
          label 255 ignored.
Images and masks are resized to --image-size square (bicubic / nearest). Without --augment the training
features are computed once and cached when they fit in --cache-gb (else recomputed at every step); --augment
trains on mmseg's random views instead (rescale 0.5-2x, --image-size crop with at most 75 % of one class,
flip; `dinov2_jax/eval/dense_augment.py`), running the backbone at every step. mIoU is
measured at that resolution (whole-image inference), or with --slide-stride on val images resized to
--eval-size, in --image-size windows (mmseg slide inference); --tta-ratios / --tta-flip add mmseg's
multi-scale / flip test-time augmentation (mean class probabilities over the scaled and mirrored images).
Optimiser: AdamW (lr 1e-3, wd 1e-4) with linear decay to 0 (our choice; set --lr / --weight-decay).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dinov2_jax.eval import dense
from dinov2_jax.eval.dense_augment import IGNORE_INDEX, segmentation_view
from dinov2_jax.models.heads.segmentation import (HEAD_LAYERS, SegmentationHead, head_to_state_dict, patch_features,
                                                  slide_logits)
from dinov2_jax.models.heads.spatial import resize_bilinear

logger = logging.getLogger("dinov2_jax.eval.segmentation")

LAYOUTS = {"ade20k": 150, "voc": 21, "folder": None}


# ---- metrics --------------------------------------------------------------------------------------
def confusion_matrix(pred, target, num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """pred, target int [...] -> [K, K] counts (rows = target class, cols = predicted); ignored pixels dropped."""
    pred, target = np.asarray(pred).ravel(), np.asarray(target).ravel()
    keep = target != ignore_index
    if (target[keep] >= num_classes).any() or (target[keep] < 0).any():
        bad = np.unique(target[keep][(target[keep] >= num_classes) | (target[keep] < 0)])
        raise ValueError(f"target labels {bad[:10]} outside [0, {num_classes}) and not the ignore index "
                         f"{ignore_index}: wrong --num-classes / --layout?")
    return np.bincount(target[keep] * num_classes + pred[keep], minlength=num_classes ** 2).reshape(
        num_classes, num_classes).astype(np.int64)


def iou_from_confusion(conf) -> tuple[float, np.ndarray, float]:
    """[K, K] -> (mIoU, per-class IoU [K] (nan where a class is neither present nor predicted), pixel acc).

    mIoU is the nan-mean over classes, as mmseg's `mean_iou`."""
    conf = np.asarray(conf, np.float64)
    inter = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, np.nan)
    return float(np.nanmean(iou)), iou, float(inter.sum() / max(conf.sum(), 1))


# ---- data -----------------------------------------------------------------------------------------
def dataset_pairs(root: str, layout: str, split: str) -> list[tuple[str, str]]:
    """(image, mask) paths of a split ("train"/"val") in one of the LAYOUTS."""
    if layout == "ade20k":
        sub = {"train": "training", "val": "validation"}[split]
        return dense.match_pairs(os.path.join(root, "images", sub), os.path.join(root, "annotations", sub))
    if layout == "voc":
        lst = os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt")
        if not os.path.isfile(lst):
            raise FileNotFoundError(f"VOC layout: {lst!r} not found")
        with open(lst) as f:
            stems = [s.strip() for s in f if s.strip()]
        return dense.match_pairs(os.path.join(root, "JPEGImages"), os.path.join(root, "SegmentationClass"), stems)
    if layout == "folder":
        return dense.match_pairs(os.path.join(root, split, "images"), os.path.join(root, split, "masks"))
    raise ValueError(f"unknown layout {layout!r}; choose one of {sorted(LAYOUTS)}")


def read_label(path: str, layout: str) -> np.ndarray:
    """PNG label map -> uint8 [H, W] at its own size; ADE20K's reduce_zero_label applied."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(f"mask {path!r} has mode {im.mode}: expected a single-channel label PNG")
        m = np.asarray(im).astype(np.int64)
    if layout == "ade20k":
        m = np.where(m == 0, IGNORE_INDEX, m - 1)
    return m.astype(np.uint8)


def load_mask(path: str, size: int, layout: str) -> np.ndarray:
    """PNG label map -> uint8 [size, size] (nearest resize); ADE20K's reduce_zero_label applied."""
    from PIL import Image

    return np.asarray(Image.fromarray(read_label(path, layout)).resize((size, size), Image.NEAREST))


def pair_loader(size: int, layout: str):
    """(image path, mask path) -> (normalised image [size, size, 3], mask uint8 [size, size])."""
    return lambda pair: (dense.load_resized_image(pair[0], (size, size)), load_mask(pair[1], size, layout))


def augmented_pair_loader(size: int, layout: str):
    """(image path, mask path), rng -> a random training view (`dense_augment.segmentation_view`)."""
    from PIL import Image

    def load(pair, rng):
        with Image.open(pair[0]) as im:
            return segmentation_view(im.convert("RGB"), read_label(pair[1], layout), size, rng)
    return load


# ---- training -------------------------------------------------------------------------------------
def seg_loss(logits, masks, ignore_index: int = IGNORE_INDEX):
    """logits [B, H, W, K] at mask resolution, masks int [B, H, W] -> mean CE over non-ignored pixels."""
    valid = masks != ignore_index
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, masks, 0).astype(jnp.int32))
    return jnp.sum(ce * valid) / jnp.maximum(valid.sum(), 1)


def train_head(batches, num_classes: int, *, iters: int = 1000, batch_size: int = 8, lr: float = 1e-3,
               weight_decay: float = 1e-4, seed: int = 0, log_every: int = 100) -> SegmentationHead:
    """Fit a SegmentationHead (AdamW, linear decay). batches: `dense.TrainBatches` (or any callable
    idx [b] -> (features [b, h, w, C], masks [b, H, W]) with len() = number of images)."""
    head = SegmentationHead(batches.feature_shape[-1], num_classes, rngs=nnx.Rngs(seed))
    size = batches.target_shape[:2]
    loss = lambda h, f, m: seg_loss(resize_bilinear(h(f, train=True), size), m)
    return dense.fit_head(head, batches, loss, iters=iters, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                          seed=seed, log_every=log_every)


@partial(nnx.jit, static_argnames="size")
def _labels(head, feats, size):
    return jnp.argmax(resize_bilinear(head(feats), size), -1)


def predict(head: SegmentationHead, feats: np.ndarray, size, batch_size: int = 8) -> np.ndarray:
    """Features [N, h, w, C] -> predicted labels [N, H, W] (logits upsampled to size)."""
    return np.concatenate([np.asarray(_labels(head, jnp.asarray(feats[s:s + batch_size]), tuple(size)))
                           for s in range(0, len(feats), batch_size)])


def metrics_from_confusion(conf) -> dict:
    miou, iou, acc = iou_from_confusion(conf)
    return {"mIoU": miou, "aAcc": acc, "per_class_iou": [None if np.isnan(v) else float(v) for v in iou]}


def evaluate_pairs(predict_batch, pairs, load_pair, num_classes: int, batch_size: int, keep: int = 4):
    """Stream the val pairs: predict_batch(images) -> labels; -> (metrics, first `keep` (images, preds, masks))."""
    conf = np.zeros((num_classes, num_classes), np.int64)
    shown = []
    for s in range(0, len(pairs), batch_size):
        loaded = [load_pair(p) for p in pairs[s:s + batch_size]]
        images, masks = np.stack([i for i, _ in loaded]), np.stack([m for _, m in loaded])
        pred = predict_batch(images)
        conf += confusion_matrix(pred, masks, num_classes)
        if len(shown) < keep:
            shown += list(zip(images, pred, masks))[:keep - len(shown)]
    return metrics_from_confusion(conf), [np.stack(a) for a in zip(*shown)]


def make_logits_fn(backbone, head: SegmentationHead, n_layers: int):
    """Compiled images [n, h, w, 3] -> logits [n, h, w, K] (backbone + head, upsampled to the input size);
    compiled once per input shape."""
    from dinov2_jax.pretrained import jit_module

    def logits(modules, x):
        bb, hd = modules
        return resize_bilinear(hd(patch_features(bb, x, n_layers)), x.shape[1:3])

    return jit_module((backbone, head), logits)


def make_slide_predictor(backbone, head: SegmentationHead, n_layers: int, crop: int, stride: int):
    """-> predict(images [N, H, W, 3]) -> labels [N, H, W] by sliding windows (crop x crop through backbone +
    head, logits upsampled to the window and averaged where windows overlap). Compiled once per window count."""
    fn = make_logits_fn(backbone, head, n_layers)
    return lambda images: np.stack([np.argmax(slide_logits(fn, im, crop, stride), -1) for im in images])


def tta_probabilities(logits_fn, image, ratios=(1.0,), flip: bool = False) -> np.ndarray:
    """mmseg's multi-scale / flip test-time augmentation (`EncoderDecoder.aug_test`) for one image [H, W, 3]:
    for each ratio the image resized (bilinear) to round(H r) x round(W r), and its horizontal mirror when
    `flip`; logits_fn maps one image [h, w, 3] -> logits [h, w, K]; the logits are resized back to [H, W],
    softmaxed and un-mirrored; -> the mean class probabilities [H, W, K]."""
    image = jnp.asarray(image)
    h, w = image.shape[:2]
    probs = []
    for r in ratios:
        size = (int(round(h * r)), int(round(w * r)))
        scaled = image if size == (h, w) else resize_bilinear(image[None], size)[0]
        for mirrored in ((False, True) if flip else (False,)):
            logits = jnp.asarray(logits_fn(scaled[:, ::-1] if mirrored else scaled))
            p = jax.nn.softmax(resize_bilinear(logits[None].astype(jnp.float32), (h, w))[0], axis=-1)
            probs.append(p[:, ::-1] if mirrored else p)
    return np.asarray(sum(probs) / len(probs))


def make_tta_predictor(backbone, head: SegmentationHead, n_layers: int, ratios, flip: bool,
                       slide: tuple[int, int] | None = None):
    """-> predict(images [N, H, W, 3]) -> labels [N, H, W] with tta_probabilities over whole-image inference,
    or over sliding windows (crop, stride) when `slide` is given. Compiled once per scaled size."""
    fn = make_logits_fn(backbone, head, n_layers)
    if slide:
        logits_fn = lambda im: slide_logits(fn, im, *slide)  # noqa: E731
    else:
        logits_fn = lambda im: fn(im[None])[0]  # noqa: E731
    return lambda images: np.stack([np.argmax(tta_probabilities(logits_fn, im, ratios, flip), -1) for im in images])


def save_picture(images, pred, masks, path: str, n: int = 4) -> None:
    from dinov2_jax.visualize import denormalize

    rows = [[denormalize(images[i:i + 1])[0], dense.colorize_labels(pred[i]), dense.colorize_labels(masks[i])]
            for i in range(min(n, len(images)))]
    dense.save_triptych(rows, path)


def load_head_weights(path: str, in_channels: int, num_classes: int) -> SegmentationHead:
    """Head from an official mmseg checkpoint (.pth, read without torch) or a head.npz; shapes checked."""
    from dinov2_jax.models.heads.segmentation import head_from_state_dict

    if path.endswith(".npz"):
        with np.load(path) as d:
            head = head_from_state_dict({k: d[k] for k in d.files})
    else:
        from dinov2_jax.weights.pth import read_pth  # torch-free, as torch.load(weights_only=True)

        head = head_from_state_dict(read_pth(path))
    if (head.in_channels, head.num_classes) != (in_channels, num_classes):
        raise SystemExit(f"--head-weights {path!r} has {head.in_channels} input channels / {head.num_classes} classes; "
                         f"this backbone and --head give {in_channels} / --num-classes {num_classes}")
    return head


# ---- CLI ------------------------------------------------------------------------------------------
def parse_ratios(text: str) -> tuple[float, ...]:
    try:
        ratios = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise SystemExit(f"--tta-ratios {text!r}: expected comma-separated numbers such as 1.0,1.32,1.73") from None
    if not ratios or min(ratios) <= 0:
        raise SystemExit(f"--tta-ratios {text!r}: expected positive scale ratios such as 1.0,1.32,1.73")
    return ratios


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m dinov2_jax.eval.segmentation",
                                description="Linear semantic segmentation on a frozen DINOv2 backbone")
    dense.add_model_args(p)
    p.add_argument("--data", required=True, help="dataset root")
    p.add_argument("--layout", default="ade20k", choices=sorted(LAYOUTS))
    p.add_argument("--num-classes", type=int, default=None, help="required for --layout folder")
    p.add_argument("--head", default="linear", choices=sorted(HEAD_LAYERS), help="linear: last block; ms: last 4")
    p.add_argument("--image-size", type=int, default=518, help="square input size (multiple of the patch size)")
    p.add_argument("--iters", type=int, default=4000)
    p.add_argument("--head-weights", default=None,
                   help="evaluate this head instead of training one: official mmseg .pth (decode_head.bn/conv_seg) "
                        "or the head.npz this CLI writes")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--slide-stride", type=int, default=0,
                   help="> 0: evaluate with sliding windows of --image-size at this stride on val images "
                        "resized to --eval-size (0: whole-image inference at --image-size)")
    p.add_argument("--eval-size", type=int, default=None, help="val image size for --slide-stride (default: image-size)")
    p.add_argument("--tta-ratios", default=None,
                   help="multi-scale test-time augmentation: comma-separated scale ratios of the val image, e.g. "
                        "1.0,1.32,1.73 (class probabilities averaged, as mmseg's aug_test); default: none")
    p.add_argument("--tta-flip", action="store_true", help="also average over the horizontal mirror of each scale")
    p.add_argument("--augment", action="store_true",
                   help="train on random views (mmseg ADE20K pipeline: rescale 0.5-2x, crop, flip); no feature cache")
    p.add_argument("--cache-gb", type=float, default=4.0,
                   help="keep the training features in memory up to this size, else recompute them every step")
    p.add_argument("--max-samples", type=int, default=None, help="use only the first N images of each split")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = get_args_parser().parse_args(argv)
    num_classes = args.num_classes or LAYOUTS[args.layout]
    if num_classes is None:
        raise SystemExit("--layout folder needs --num-classes")
    model = dense.load_model(args)
    dense.check_size(args.image_size, model.patch_size)
    n_layers = HEAD_LAYERS[args.head]
    feat_fn = dense.make_frozen_feature_fn(model, partial(patch_features, n_layers=n_layers))
    if args.head_weights:
        head, n_train = load_head_weights(args.head_weights, model.embed_dim * n_layers, num_classes), 0
    else:
        pairs = dataset_pairs(args.data, args.layout, "train")[:args.max_samples or None]
        augment = augmented_pair_loader(args.image_size, args.layout) if args.augment else None
        batches = dense.TrainBatches(pairs, pair_loader(args.image_size, args.layout), feat_fn, args.batch_size,
                                     args.cache_gb, augment=augment, seed=args.seed)
        head = train_head(batches, num_classes, iters=args.iters, batch_size=args.batch_size,
                          lr=args.lr, weight_decay=args.weight_decay, seed=args.seed)
        n_train = len(pairs)
    val_pairs = dataset_pairs(args.data, args.layout, "val")[:args.max_samples or None]
    slide = (args.image_size, args.slide_stride) if args.slide_stride > 0 else None
    eval_size = (args.eval_size or args.image_size) if slide else args.image_size
    mode = dict(inference="slide", eval_size=eval_size, stride=args.slide_stride) if slide else dict(inference="whole")
    if args.tta_ratios or args.tta_flip:
        ratios = parse_ratios(args.tta_ratios or "1.0")
        predict_batch = make_tta_predictor(model, head, n_layers, ratios, args.tta_flip, slide)
        mode.update(tta_ratios=list(ratios), tta_flip=args.tta_flip)
    elif slide:
        predict_batch = make_slide_predictor(model, head, n_layers, *slide)
    else:
        predict_batch = lambda ims: predict(head, dense.batched(feat_fn, ims, args.batch_size), ims.shape[1:3])  # noqa: E731
    metrics, (images, pred, masks) = evaluate_pairs(predict_batch, val_pairs, pair_loader(eval_size, args.layout),
                                                    num_classes, args.batch_size)
    metrics.update(head=args.head, layout=args.layout, image_size=args.image_size, iters=args.iters,
                   augment=bool(args.augment and not args.head_weights),
                   n_train=n_train, n_val=len(val_pairs), **mode)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    np.savez(os.path.join(args.out_dir, "head.npz"), **head_to_state_dict(head))
    save_picture(images, pred, masks, os.path.join(args.out_dir, "seg.png"))
    print(f"mIoU {metrics['mIoU']:.4f}  aAcc {metrics['aAcc']:.4f}  ({args.head} head, {len(val_pairs)} val images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
