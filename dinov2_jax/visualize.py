"""PCA picture of DINOv2 patch features (the DINOv2 paper's Fig. 1 / README picture; issues #23, #45).

Recipe (numpy, deterministic):
  1. PCA (via SVD of the centred matrix) of the patch features of all images together;
  2. the first component separates object from background: it is min-max scaled to [0, 1] over all
     patches and patches above `threshold` are kept as foreground. The sign of a principal component is
     arbitrary, so we orient it such that the patches on the image borders (usually background) have the
     lower mean value;
  3. a second PCA on the foreground patches only; its first 3 components, min-max scaled per component,
     become RGB; background patches are black.
The picture is a grid: one row per image, the (denormalised) input on the left, its PCA map on the right.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def pca_components(x, n_components: int):
    """x [N, D] -> (mean [D], components [k, D]) with k = min(n_components, N, D), rows unit-norm,
    ordered by explained variance; each component's sign is fixed so its largest |loading| is positive."""
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    comps = vt[: min(n_components, vt.shape[0])]
    signs = np.sign(comps[np.arange(len(comps)), np.argmax(np.abs(comps), axis=1)])
    return mean, comps * signs[:, None]


def pca_project(x, mean, comps):
    """x [N, D] -> scores [N, k]."""
    return (np.asarray(x, np.float64) - mean) @ comps.T


def _minmax(v, axis=0):
    lo, hi = v.min(axis=axis, keepdims=True), v.max(axis=axis, keepdims=True)
    return (v - lo) / np.maximum(hi - lo, 1e-12)


def border_mask(h: int, w: int) -> np.ndarray:
    """[h, w] bool, True on the outermost ring of patches."""
    m = np.zeros((h, w), bool)
    m[0, :] = m[-1, :] = m[:, 0] = m[:, -1] = True
    return m


def pca_rgb_maps(patch_tokens, threshold: float = 0.5, remove_background: bool = True):
    """patch_tokens [B, h, w, D] -> (rgb [B, h, w, 3] in [0, 1], foreground [B, h, w] bool).

    threshold: on the min-max scaled first component (oriented so borders are low); patches above it are
    foreground. remove_background=False keeps every patch and runs one PCA for the colours.
    """
    tokens = np.asarray(patch_tokens, np.float64)
    if tokens.ndim != 4:
        raise ValueError(f"expected patch tokens [B, h, w, D], got shape {tokens.shape}")
    b, h, w, d = tokens.shape
    flat = tokens.reshape(-1, d)
    if remove_background:
        mean, comps = pca_components(flat, 1)
        first = pca_project(flat, mean, comps)[:, 0].reshape(b, h, w)
        border = np.broadcast_to(border_mask(h, w), first.shape)
        if h > 2 and w > 2 and first[border].mean() > first[~border].mean():
            first = -first  # orient: background (borders) low
        first = _minmax(first.reshape(-1)).reshape(b, h, w)
        fg = first > threshold
        if fg.sum() < 3:  # nothing separable: keep every patch rather than an empty picture
            fg = np.ones_like(fg)
    else:
        fg = np.ones((b, h, w), bool)
    fg_feats = flat[fg.reshape(-1)]
    mean, comps = pca_components(fg_feats, 3)
    scores = _minmax(pca_project(fg_feats, mean, comps))
    if scores.shape[1] < 3:  # fewer than 3 components available (tiny inputs): pad with zeros
        scores = np.pad(scores, ((0, 0), (0, 3 - scores.shape[1])))
    rgb = np.zeros((b * h * w, 3))
    rgb[fg.reshape(-1)] = scores
    return rgb.reshape(b, h, w, 3).astype(np.float32), fg


def denormalize(images) -> np.ndarray:
    """ImageNet-normalised [B, H, W, 3] float -> uint8 [B, H, W, 3]."""
    x = np.asarray(images, np.float32) * IMAGENET_STD + IMAGENET_MEAN
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def render_pca_grid(images, rgb_maps, path: str, *, max_images: int = 32, pad: int = 4,
                    min_height: int = 0) -> Image.Image:
    """Write a PNG grid: row i = [input image i | its PCA map upsampled (nearest) to the image size].

    images [B, H, W, 3] ImageNet-normalised float; rgb_maps [B, h, w, 3] in [0, 1]. Images smaller
    than `min_height` are shown enlarged by an integer factor (bicubic; the maps stay nearest).
    """
    images = denormalize(images)[:max_images]
    maps = np.clip(np.asarray(rgb_maps)[:max_images] * 255.0, 0, 255).astype(np.uint8)
    n, h0, w0 = images.shape[:3]
    zoom = max(1, -(-min_height // h0))
    hh, ww = h0 * zoom, w0 * zoom
    canvas = Image.new("RGB", (2 * ww + 3 * pad, n * hh + (n + 1) * pad), (255, 255, 255))
    for i in range(n):
        y = pad + i * (hh + pad)
        image = Image.fromarray(images[i])
        canvas.paste(image if zoom == 1 else image.resize((ww, hh), Image.BICUBIC), (pad, y))
        canvas.paste(Image.fromarray(maps[i]).resize((ww, hh), Image.NEAREST), (2 * pad + ww, y))
    canvas.save(path)
    return canvas


def save_pca_picture(images, patch_tokens, path: str, *, threshold: float = 0.5, max_images: int = 32,
                     min_height: int = 0):
    """images [B, H, W, 3] (normalised), patch_tokens [B, h, w, D] -> PNG at `path`; returns the rgb maps."""
    rgb, _ = pca_rgb_maps(patch_tokens, threshold=threshold)
    render_pca_grid(images, rgb, path, max_images=max_images, min_height=min_height)
    return rgb
