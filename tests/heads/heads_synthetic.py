"""Synthetic dense datasets with a known answer, written as image folders (shared by the head tests)."""
import os

import numpy as np
from PIL import Image

COLOURS = np.array([[220, 40, 40], [40, 200, 60], [50, 60, 220], [230, 220, 40]], np.uint8)


def colour_regions(n: int, size: int = 56, cell: int = 14, n_classes: int = 4, seed: int = 0):
    """Images whose patch-aligned cells are filled with a class colour (+ noise); mask = class of the cell.
    -> images uint8 [n, size, size, 3], masks uint8 [n, size, size]."""
    rng = np.random.default_rng(seed)
    g = size // cell
    cls = rng.integers(0, n_classes, (n, g, g))
    masks = np.kron(cls, np.ones((cell, cell), np.int64)).astype(np.uint8)
    images = COLOURS[masks].astype(np.float64) + rng.normal(0, 12, (n, size, size, 3))
    return np.clip(images, 0, 255).astype(np.uint8), masks


def write_seg_folder(root: str, split: str, images, masks) -> None:
    for sub in ("images", "masks"):
        os.makedirs(os.path.join(root, split, sub), exist_ok=True)
    for i, (im, m) in enumerate(zip(images, masks)):
        Image.fromarray(im).save(os.path.join(root, split, "images", f"{i:03d}.png"))
        Image.fromarray(m, mode="L").save(os.path.join(root, split, "masks", f"{i:03d}.png"))


def tiny_backbone_dir(path: str, img_size: int = 56, depth: int = 4) -> str:
    """A random-init tiny backbone saved as a converted dir (what --weights takes)."""
    from dinov2_jax import convert, hub

    model = hub.create_model(dict(img_size=img_size, patch_size=14, embed_dim=32, depth=depth, num_heads=2,
                                  init_values=1.0))
    convert.save_converted(model, path)
    return path


def depth_planes(n: int, size: int = 56, seed: int = 0):
    """Depth = a random tilted plane over the image (smooth in position, 1..5 m); the image shows it as
    brightness (near = bright) + noise, so a linear head on patch tokens can read it.
    -> images uint8 [n, size, size, 3], depth float32 [n, size, size]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    a, b, c = rng.uniform(1, 2, n), rng.uniform(-1, 2, n), rng.uniform(-1, 1, n)
    depth = np.clip(a[:, None, None] + b[:, None, None] * yy + c[:, None, None] * xx, 1.0, 5.0).astype(np.float32)
    grey = 255 * (5.0 - depth) / 4.0
    images = np.stack([grey, 0.6 * grey + 40, 255 - grey], -1) + rng.normal(0, 6, (n, size, size, 3))
    return np.clip(images, 0, 255).astype(np.uint8), depth


def write_depth_folder(root: str, split: str, images, depths) -> None:
    for sub in ("images", "depth"):
        os.makedirs(os.path.join(root, split, sub), exist_ok=True)
    for i, (im, d) in enumerate(zip(images, depths)):
        Image.fromarray(im).save(os.path.join(root, split, "images", f"{i:03d}.png"))
        np.save(os.path.join(root, split, "depth", f"{i:03d}.npy"), d)
