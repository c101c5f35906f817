"""Synthetic embeddings and images for the curation tests: planted clusters, planted near-duplicates."""
import os

import numpy as np


def unit(x):
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def skewed_clusters(sizes, dim: int = 32, spread: float = 0.35, seed: int = 0):
    """Points around len(sizes) random unit centres (cluster c has sizes[c] points, cosine to the
    centre about 1 / sqrt(1 + spread^2 * dim)). -> (unit points [N, D], planted cluster [N])."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(len(sizes), dim)))
    label = np.repeat(np.arange(len(sizes)), sizes)
    x = centres[label] + spread * rng.normal(size=(len(label), dim)).astype(np.float32)
    return unit(x), label


def with_near_duplicates(x, n_groups: int, max_copies: int = 3, noise: float = 0.08, seed: int = 0):
    """Append augmented copies (small noise, renormalised) of `n_groups` random rows of x.
    -> (points [N + copies, D], planted group [N + copies]: index of the original, -1 when the row has
    no copy)."""
    rng = np.random.default_rng(seed)
    originals = rng.choice(len(x), n_groups, replace=False)
    copies, group = [], np.full(len(x), -1, np.int64)
    group[originals] = originals
    extra = []
    for o in originals:
        m = int(rng.integers(1, max_copies + 1))
        copies.append(unit(x[o][None] + noise * rng.normal(size=(m, x.shape[1]))))
        extra.append(np.full(m, o))
    return np.concatenate([x] + copies), np.concatenate([group] + extra)


def tiny_backbone_dir(path: str, img_size: int = 28) -> str:
    """A random-init tiny backbone saved as a converted dir (what --weights / from_pretrained take)."""
    from dinov2_jax import convert, hub

    model = hub.create_model(dict(img_size=img_size, patch_size=14, embed_dim=32, depth=2, num_heads=2,
                                  init_values=1.0))
    convert.save_converted(model, path)
    return path


def pattern_images(n: int, size: int = 40, seed: int = 0):
    """n distinct random colour patterns uint8 [n, size, size, 3] (smooth blobs, so crops stay alike)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    out = []
    for _ in range(n):
        img = np.zeros((size, size, 3))
        for _ in range(3):
            cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.1, 0.4)
            img += rng.uniform(0, 255, 3) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / r**2)[..., None]
        out.append(np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8))
    return np.stack(out)


def write_images(folder: str, images, prefix: str = "img") -> list:
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, im in enumerate(images):
        p = os.path.join(folder, f"{prefix}_{i:04d}.png")
        Image.fromarray(im).save(p)
        paths.append(p)
    return paths
