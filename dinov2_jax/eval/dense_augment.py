"""Training-time augmentation of (image, target) pairs for the dense heads (`--augment` in the segmentation and
depth CLIs). Pure numpy/PIL functions of an explicit `np.random.Generator`; each returns a view at the fixed
training shape, so one compiled backbone call serves every step.

Segmentation follows mmseg's standard ADE20K training pipeline (the one the DINOv2 linear heads were trained
with; the config itself is not in the official repository): Resize(img_scale=(4S, S), ratio_range=(0.5, 2.0),
keep_ratio) -> RandomCrop(S, cat_max_ratio=0.75) -> RandomFlip(0.5) -> Normalize -> Pad(S, 0, ignore).
mmseg's PhotoMetricDistortion is not applied.
Depth follows the NYU pipeline of the Monocular-Depth-Estimation-Toolbox that the official `dinov2/eval/depth`
code comes from: RandomRotate(0.5, 2.5 deg) -> RandomFlip(0.5) -> ColorAug(0.5, gamma 0.9-1.1, brightness
0.75-1.25 (0.9-1.1 on KITTI), colour 0.9-1.1). Its random 416 x 544 crop is left out: our heads train on the
whole image resized to S x S, and a crop at a larger resize would change the focal length (in pixels) between
training and evaluation.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from dinov2_jax.data.augmentations import IMAGENET_MEAN, IMAGENET_STD, normalize

IGNORE_INDEX = 255  # mmseg's label for pixels that count nowhere (also the padding of a view)


def _rescale_size(w: int, h: int, short: float, long: float) -> tuple[int, int]:
    """mmcv `rescale_size` with keep_ratio: the largest scale with short side <= short and long side <= long."""
    f = min(long / max(w, h), short / min(w, h))
    return int(w * f + 0.5), int(h * f + 0.5)


def crop_box(label: np.ndarray, size: int, rng: np.random.Generator, cat_max_ratio: float = 0.75,
             ignore_index: int = IGNORE_INDEX, tries: int = 10) -> tuple[int, int, int, int]:
    """mmseg RandomCrop's box (y0, y1, x0, x1) of at most size x size in label [H, W]: resampled up to `tries`
    times until no class covers cat_max_ratio or more of the non-ignored pixels (and >= 2 classes are in it)."""
    h, w = label.shape

    def box():
        y0 = int(rng.integers(0, max(h - size, 0) + 1))
        x0 = int(rng.integers(0, max(w - size, 0) + 1))
        return y0, min(y0 + size, h), x0, min(x0 + size, w)

    b = box()
    if cat_max_ratio < 1.0:
        for _ in range(tries):
            y0, y1, x0, x1 = b
            classes, counts = np.unique(label[y0:y1, x0:x1], return_counts=True)
            counts = counts[classes != ignore_index]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            b = box()
    return b


def segmentation_view(image: Image.Image, label: np.ndarray, size: int, rng: np.random.Generator,
                      scale_range=(0.5, 2.0), cat_max_ratio: float = 0.75, flip_prob: float = 0.5,
                      ignore_index: int = IGNORE_INDEX) -> tuple[np.ndarray, np.ndarray]:
    """RGB image + label map uint8 [H, W] -> (normalised image float32 [size, size, 3], label uint8 [size, size]):
    random rescale (short side size * U(scale_range), long side <= 4x that), random crop, flip, pad (image 0 after
    normalisation, label ignore_index), as mmseg's train pipeline."""
    if label.shape != (image.height, image.width):
        raise ValueError(f"image is {image.height}x{image.width} but its label map is {label.shape[0]}x{label.shape[1]}")
    r = rng.uniform(*scale_range)
    w, h = _rescale_size(image.width, image.height, size * r, 4 * size * r)
    img = np.asarray(image.convert("RGB").resize((w, h), Image.BILINEAR))
    lab = np.asarray(Image.fromarray(label).resize((w, h), Image.NEAREST))
    y0, y1, x0, x1 = crop_box(lab, size, rng, cat_max_ratio, ignore_index)
    img, lab = img[y0:y1, x0:x1], lab[y0:y1, x0:x1]
    if rng.random() < flip_prob:
        img, lab = img[:, ::-1], lab[:, ::-1]
    out_img = np.zeros((size, size, 3), np.float32)
    out_lab = np.full((size, size), ignore_index, np.uint8)
    out_img[:img.shape[0], :img.shape[1]] = normalize(np.ascontiguousarray(img))
    out_lab[:lab.shape[0], :lab.shape[1]] = lab
    return out_img, out_lab


def depth_view(image: np.ndarray, depth: np.ndarray, rng: np.random.Generator, rotate_prob: float = 0.5,
               max_degree: float = 2.5, flip_prob: float = 0.5, colour_prob: float = 0.5,
               brightness=(0.75, 1.25)) -> tuple[np.ndarray, np.ndarray]:
    """uint8 image [S, S, 3] + depth float32 [S, S] (0 = invalid) -> (normalised image float32, depth): random
    small rotation (image bilinear, depth nearest, uncovered pixels 0 = invalid), flip, and colour jitter
    (gamma, brightness, per-channel colour on [0, 1], clipped), as the toolbox's NYU/KITTI train pipeline."""
    if depth.shape != image.shape[:2]:
        raise ValueError(f"image is {image.shape[0]}x{image.shape[1]} but its depth map is {depth.shape}")
    img, dep = image, depth.astype(np.float32)
    if rng.random() < rotate_prob:
        angle = rng.uniform(-max_degree, max_degree)
        img = np.asarray(Image.fromarray(img).rotate(angle, Image.BILINEAR))
        dep = np.asarray(Image.fromarray(dep, mode="F").rotate(angle, Image.NEAREST), np.float32)
    if rng.random() < flip_prob:
        img, dep = img[:, ::-1], dep[:, ::-1]
    x = img.astype(np.float32) / 255.0
    if rng.random() < colour_prob:
        gamma, bright = rng.uniform(0.9, 1.1), rng.uniform(*brightness)
        colour = rng.uniform(0.9, 1.1, 3).astype(np.float32)
        x = np.clip(x ** gamma * bright * colour, 0.0, 1.0)
    return ((x - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32), np.ascontiguousarray(dep)
