"""Builders shared by several test modules (tests/ is on sys.path: `from helpers import tiny_vit`)."""
import numpy as np
from flax import nnx
from PIL import Image

from dinov2_jax.models.vision_transformer import DinoVisionTransformer


def tiny_vit(seed: int = 0, **overrides) -> DinoVisionTransformer:
    """A random-init DINOv2 ViT small enough for CPU tests: 28-pixel images, 14-pixel patches (2x2 grid),
    width 32, 2 blocks, 2 heads, LayerScale 1.0; any constructor argument can be overridden."""
    kw = dict(img_size=28, patch_size=14, embed_dim=32, depth=2, num_heads=2, init_values=1.0)
    kw.update(overrides)
    return DinoVisionTransformer(**kw, rngs=nnx.Rngs(seed))


def write_object_images(root, n: int = 5) -> list[str]:
    """`n` images of varying sizes, a bright rectangle on a dark background, half of them in `sub/`, plus a
    non-image file; returns the image paths relative to `root`, sorted."""
    rng = np.random.default_rng(0)
    (root / "sub").mkdir(parents=True)
    names = []
    for i in range(n):
        h, w = rng.integers(50, 90, 2)
        im = np.zeros((h, w, 3), np.uint8) + rng.integers(0, 60, 3).astype(np.uint8)
        im[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = rng.integers(150, 255, 3)  # a bright "object"
        name = f"img{i}.png" if i % 2 else f"sub/img{i}.jpg"
        Image.fromarray(im).save(root / name)
        names.append(name)
    (root / "notes.txt").write_text("not an image")
    return sorted(names)
