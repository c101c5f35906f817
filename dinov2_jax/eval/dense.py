"""Shared pieces of the dense-task CLIs (segmentation, depth): pairs of (image, target) files, resizing,
frozen-backbone feature caching, colour palette and the input / prediction / target picture."""
from __future__ import annotations

import argparse
import logging
import os

import jax
import numpy as np
from PIL import Image

from dinov2_jax.data.augmentations import normalize
from dinov2_jax.padding import pad_rows

logger = logging.getLogger("dinov2_jax.eval.dense")


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", default=None, help="converted checkpoint dir or official .pth")
    p.add_argument("--arch", default=None, help="hub name (dinov2_vits14, ...); default: read from the weights")
    p.add_argument("--allow-random-init", action="store_true", help="use a random-init --arch backbone (testing)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="backbone dtype")


def load_model(args):
    from dinov2_jax.hub import load_for_eval

    return load_for_eval(args.weights, args.arch, allow_random_init=args.allow_random_init, dtype=args.dtype)


def match_pairs(image_dir: str, target_dir: str, stems=None, target_ext: str = ".png") -> list[tuple[str, str]]:
    """(image, target) paths paired by file stem; stems (optional list) selects and orders them."""
    from dinov2_jax.data.sources import list_images

    for d in (image_dir, target_dir):
        if not os.path.isdir(d):
            raise FileNotFoundError(f"{d!r} is not a directory")
    images = {os.path.splitext(f)[0]: os.path.join(image_dir, f) for f in list_images(image_dir)}
    targets = {os.path.splitext(f)[0]: os.path.join(target_dir, f) for f in sorted(os.listdir(target_dir))
               if target_ext is None or f.endswith(target_ext)}
    if stems is None:
        stems = sorted(set(images) & set(targets))
        if not stems:
            raise FileNotFoundError(f"no image in {image_dir!r} has a target of the same name in {target_dir!r}")
    missing = [s for s in stems if s not in images or s not in targets]
    if missing:
        raise FileNotFoundError(f"{len(missing)} listed samples lack an image or a target, e.g. {missing[:3]}")
    return [(images[s], targets[s]) for s in stems]


def load_resized_rgb(path: str, size: tuple[int, int]) -> np.ndarray:
    """Image file -> uint8 RGB [H, W, 3] resized (bicubic) to size (H, W)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((size[1], size[0]), Image.BICUBIC))


def load_resized_image(path: str, size: tuple[int, int]) -> np.ndarray:
    """Image file -> ImageNet-normalised float32 [H, W, 3] resized (bicubic) to size (H, W)."""
    return normalize(load_resized_rgb(path, size))


def check_size(image_size: int, patch: int) -> None:
    if image_size % patch:
        raise SystemExit(f"--image-size {image_size} is not a multiple of the patch size {patch}; "
                         f"use {image_size // patch * patch} or {(image_size // patch + 1) * patch}")


def fit_head(head, batches, loss_fn, *, iters: int, batch_size: int, lr: float, weight_decay: float, seed: int,
             log_every: int, loss_name: str = "loss"):
    """Train `head` in place on frozen features: AdamW with a linear lr decay to 0, random batches of
    `batch_size` images (without replacement within a batch). `batches`: idx [b] -> (features, targets);
    `loss_fn(head, features, targets)` -> scalar. Returns the head."""
    import jax.numpy as jnp
    import optax
    from flax import nnx

    opt = nnx.Optimizer(head, optax.adamw(optax.linear_schedule(lr, 0.0, iters), weight_decay=weight_decay),
                        wrt=nnx.Param)

    @nnx.jit
    def step(head, opt, f, t):
        loss, grads = nnx.value_and_grad(lambda h: loss_fn(h, f, t))(head)
        opt.update(head, grads)
        return loss

    rng = np.random.default_rng(seed)
    bs = min(batch_size, len(batches))
    for it in range(iters):
        f, t = batches(rng.choice(len(batches), bs, replace=False))
        loss = step(head, opt, jnp.asarray(f), jnp.asarray(t))
        if log_every and (it % log_every == 0 or it == iters - 1):
            logger.info("iter %d/%d %s %.4f", it, iters, loss_name, float(loss))
    return head


def make_frozen_feature_fn(backbone, feature_fn):
    """Jitted images [B, H, W, 3] -> feature_fn(backbone, images) (float32), backbone frozen."""
    from dinov2_jax.pretrained import jit_module

    fn = jit_module(backbone, lambda m, images: jax.tree.map(lambda a: a.astype("float32"), feature_fn(m, images)))
    return lambda images: jax.device_get(fn(images))


def batched(fn, images: np.ndarray, batch_size: int):
    """Apply fn over images in fixed-size batches (last one padded: one compiled shape); concat the leaves."""
    outs = []
    for s in range(0, len(images), batch_size):
        b = images[s:s + batch_size]
        n = len(b)
        outs.append(jax.tree.map(lambda a: np.asarray(a)[:n], fn(pad_rows(b, batch_size))))
    return jax.tree.map(lambda *a: np.concatenate(a), *outs)


def flip_average(predict_fn, images: np.ndarray, pred=None) -> np.ndarray:
    """Horizontal-flip test-time augmentation of a dense prediction (the depth toolbox's aug_test with
    MultiScaleFlipAug(flip=True)): mean of predict_fn(images) (or `pred`, when already computed) and the
    un-mirrored predict_fn(mirrored images). images [N, H, W, C] -> predict_fn's [N, H, W, ...]."""
    pred = np.asarray(predict_fn(images) if pred is None else pred)
    mirrored = np.asarray(predict_fn(np.ascontiguousarray(images[:, :, ::-1])))[:, :, ::-1]
    return (pred + mirrored) / 2


def label_palette(n: int = 256) -> np.ndarray:
    """[n, 3] uint8 colours: the PASCAL VOC colour scheme (bits of the label index spread over R, G, B)."""
    pal = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


def colorize_labels(labels, ignore_index: int = 255) -> np.ndarray:
    """[H, W] int labels -> [H, W, 3] uint8 (ignored pixels white)."""
    labels = np.asarray(labels)
    pal = label_palette(256)
    out = pal[np.clip(labels, 0, 255)]
    out[labels == ignore_index] = 255
    return out


def colorize_depth(depth, vmin: float, vmax: float) -> np.ndarray:
    """[H, W] depth -> [H, W, 3] uint8 with matplotlib's magma (near = bright); invalid (<= 0) black."""
    from matplotlib import colormaps

    d = np.asarray(depth, np.float32)
    t = 1.0 - np.clip((d - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    out = (colormaps["magma"](t)[..., :3] * 255).astype(np.uint8)
    out[~(d > 0)] = 0
    return out


def save_triptych(rows, path: str, pad: int = 4, min_height: int = 96) -> None:
    """rows: list of [input, prediction, target] uint8 [H, W, 3] -> PNG grid (enlarged to min_height, nearest)."""
    h, w = rows[0][0].shape[:2]
    zoom = max(1, -(-min_height // h))
    hh, ww = h * zoom, w * zoom
    canvas = Image.new("RGB", (3 * ww + 4 * pad, len(rows) * (hh + pad) + pad), (255, 255, 255))
    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            canvas.paste(Image.fromarray(im).resize((ww, hh), Image.NEAREST), (pad + j * (ww + pad), pad + i * (hh + pad)))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    canvas.save(path)


def iterate_pairs(pairs, load_pair, feat_fn, batch_size: int):
    """Yield (images [b, H, W, 3], features [b, ...], targets [b, ...]) over `pairs` in order, loading from disk
    batch by batch (fixed batch shape for feat_fn: the last batch is padded, then cut)."""
    for s in range(0, len(pairs), batch_size):
        loaded = [load_pair(p) for p in pairs[s:s + batch_size]]
        images = np.stack([im for im, _ in loaded])
        targets = np.stack([t for _, t in loaded])
        yield images, batched(feat_fn, images, batch_size), targets


class TrainBatches:
    """Training batches (frozen features, targets) by index. The features are computed once and kept in memory
    when they fit in `cache_gb`; otherwise images are read and the backbone runs at every step. With `augment`
    ((image, target) pair, rng -> (image, target) at load_pair's shapes, see `dense_augment`) every step draws a
    new random view of each image, so nothing is cached."""

    def __init__(self, pairs, load_pair, feat_fn, batch_size: int, cache_gb: float = 4.0, augment=None, seed: int = 0):
        self.pairs, self.load_pair, self.feat_fn, self.batch_size = list(pairs), load_pair, feat_fn, batch_size
        self.augment, self.rng = augment, np.random.default_rng(seed)
        first = next(iterate_pairs(self.pairs[:1], load_pair, feat_fn, batch_size))
        self.feature_shape, self.target_shape = first[1].shape[1:], first[2].shape[1:]
        need = len(self.pairs) * (np.prod(self.feature_shape) * 4 + np.prod(self.target_shape) * 4) / 2 ** 30
        self.cached = augment is None and need <= cache_gb
        logger.info(
            "%d training images, features %s: %s (%.2f GiB)", len(self.pairs), self.feature_shape,
            "cached in memory" if self.cached else
            "recomputed each step (augmented views)" if augment is not None else
            "recomputed each step (over --cache-gb)", need)
        if self.cached:
            parts = list(iterate_pairs(self.pairs, load_pair, feat_fn, batch_size))
            self.feats = np.concatenate([f for _, f, _ in parts])
            self.targets = np.concatenate([t for _, _, t in parts])

    def __len__(self):
        return len(self.pairs)

    def __call__(self, idx):
        """idx [b] -> (features [b, ...], targets [b, ...])."""
        if self.cached:
            return self.feats[idx], self.targets[idx]
        if self.augment is None:
            _, f, t = next(iterate_pairs([self.pairs[i] for i in idx], self.load_pair, self.feat_fn, len(idx)))
            return f, t
        load = lambda pair: self.augment(pair, self.rng)  # noqa: E731
        _, f, t = next(iterate_pairs([self.pairs[i] for i in idx], load, self.feat_fn, len(idx)))
        if f.shape[1:] != self.feature_shape or t.shape[1:] != self.target_shape:
            raise ValueError(f"an augmented view gave features {f.shape[1:]} / targets {t.shape[1:]}, expected "
                             f"{self.feature_shape} / {self.target_shape}")
        return f, t
