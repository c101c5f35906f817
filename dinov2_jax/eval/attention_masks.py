"""Do the thresholded cls attention masks find the object? IoU on a synthetic object-on-background set.

  python -m dinov2_jax.eval.attention_masks --weights DIR [--image-size 64] [--n-images 100] [--mass 0.6]
      [--photo-size 128] [--block -1] [--png synthetic.png]

Each image: a blurred demo photo (`dinov2_jax.data.sources.DemoSource`'s scikit-image photos) as the
background, with a sharp square crop of another demo photo pasted at a random place (side 30-55 % of
the image, on the patch grid). The ground truth is that square. The mask is DINO's: the patches holding
`mass` of the cls token's attention (mean over heads) in the last block (`visualize.attention_mass_mask`).
Chance: the expected IoU of a mask with as many patches drawn uniformly at random (exact
hypergeometric expectation), so a model whose attention ignores the image scores chance on average.
Also printed: the IoU on four demo photos against rough foreground outlines drawn by hand
(`DEMO_FOREGROUND`), at `--photo-size`.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
from PIL import Image, ImageFilter


def synthetic_objects(n: int, size: int = 64, patch: int = 8, seed: int = 0):
    """-> (images [n, size, size, 3] ImageNet-normalised float32, masks [n, size/patch, size/patch] bool)."""
    from dinov2_jax.data.augmentations import normalize
    from dinov2_jax.data.sources import DEMO_CLASSES, DemoSource

    if size % patch:
        raise ValueError(f"size {size} is not a multiple of the patch size {patch}")
    demo = DemoSource("train")
    photos = [demo._base(c) for c in range(len(DEMO_CLASSES))]
    rng = np.random.default_rng(seed)
    grid = size // patch
    images, masks = [], []
    for _ in range(n):
        bg_c, obj_c = rng.choice(len(photos), 2, replace=False)
        bg = photos[bg_c].resize((size, size), Image.BICUBIC).filter(ImageFilter.GaussianBlur(size / 16))
        side = int(rng.integers(max(1, round(0.3 * grid)), round(0.55 * grid) + 1))  # in patches
        y, x = (int(v) for v in rng.integers(0, grid - side + 1, 2))
        photo = photos[obj_c]
        w, h = photo.size
        crop = int(min(w, h) * rng.uniform(0.4, 0.9))
        left, top = int(rng.integers(0, w - crop + 1)), int(rng.integers(0, h - crop + 1))
        obj = photo.crop((left, top, left + crop, top + crop)).resize((side * patch, side * patch), Image.BICUBIC)
        bg.paste(obj, (x * patch, y * patch))
        images.append(normalize(bg))
        m = np.zeros((grid, grid), bool)
        m[y:y + side, x:x + side] = True
        masks.append(m)
    return np.stack(images).astype(np.float32), np.stack(masks)


# Rough foreground outlines drawn by hand (this project) on four demo photos, in the photo's pixels:
# polygons [(x, y), ...] and ellipses (x0, y0, x1, y1). The masks are rough (a few pixels off at the
# edges), meant to tell "on the object" from "on the background" at patch resolution.
DEMO_FOREGROUND = {
    "camera": [("polygon", [(0, 250), (20, 215), (60, 180), (130, 110), (160, 80), (200, 65), (250, 80),
                            (270, 110), (265, 140), (325, 140), (332, 175), (325, 230), (290, 245),
                            (250, 250), (220, 255), (175, 300), (150, 330), (150, 512), (0, 512)])],
    "rocket": [("polygon", [(318, 125), (333, 145), (337, 405), (300, 405), (303, 145)])],
    "coffee": [("ellipse", (75, 105, 480, 385)),
               ("polygon", [(175, 105), (180, 40), (230, 20), (330, 18), (400, 40), (410, 105)])],
    "astronaut": [("polygon", [(20, 512), (25, 330), (50, 260), (110, 220), (120, 180), (155, 150), (150, 90),
                               (160, 40), (200, 15), (260, 15), (295, 50), (300, 100), (290, 150), (300, 200),
                               (345, 260), (360, 320), (365, 360), (430, 345), (490, 370), (512, 400),
                               (512, 512)])],
}


def demo_photo_masks(size: int = 128, patch: int = 8, names=None):
    """The hand-outlined demo photos through the eval transform (resize 256/224 x size, center crop):
    -> (names, images [k, size, size, 3] normalised, masks [k, size/p, size/p] bool: patches at least
    half inside the outline)."""
    from PIL import ImageDraw

    from dinov2_jax.data.augmentations import eval_resize_size, eval_transform
    from dinov2_jax.data.sources import DEMO_CLASSES, DemoSource

    names = list(DEMO_FOREGROUND) if names is None else list(names)
    demo, grid = DemoSource("train"), size // patch
    images, masks = [], []
    for name in names:
        photo = demo._base(DEMO_CLASSES.index(name))
        outline = Image.new("L", photo.size, 0)
        draw = ImageDraw.Draw(outline)
        for kind, shape in DEMO_FOREGROUND[name]:
            (draw.polygon if kind == "polygon" else draw.ellipse)(shape, fill=255)
        images.append(eval_transform(photo, resize_size=eval_resize_size(size), crop_size=size))
        # the same resize + crop as the photo; a normalised channel > its midpoint = inside
        m = eval_transform(outline, resize_size=eval_resize_size(size), crop_size=size)[..., 0]
        inside = m > (m.max() + m.min()) / 2
        masks.append(inside.reshape(grid, patch, grid, patch).mean((1, 3)) >= 0.5)
        if not masks[-1].any():
            raise ValueError(f"the {name!r} outline covers no patch at size {size} with {patch}-pixel patches; "
                             "use a larger size (128 or more)")
    return names, np.stack(images), np.stack(masks)


def iou(a, b) -> np.ndarray:
    """Bool masks [..., h, w] -> IoU per mask [...]."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    inter = (a & b).sum((-2, -1))
    union = (a | b).sum((-2, -1))
    return inter / np.maximum(union, 1)


def chance_iou(pred, gt) -> np.ndarray:
    """Expected IoU of a uniformly random mask with as many patches as `pred` against `gt` [..., h, w]
    (exact: the intersection is hypergeometric)."""
    from scipy.stats import hypergeom

    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    n = pred.shape[-2] * pred.shape[-1]
    k, g = pred.sum((-2, -1)).reshape(-1), gt.sum((-2, -1)).reshape(-1)
    out = np.empty(len(k))
    for i, (ki, gi) in enumerate(zip(k, g)):
        j = np.arange(max(0, ki + gi - n), min(ki, gi) + 1)
        out[i] = (hypergeom(n, gi, ki).pmf(j) * j / np.maximum(ki + gi - j, 1)).sum()
    return out.reshape(pred.shape[:-2])


def evaluate(model, images, gt, *, mass: float = 0.6, block: int = -1, batch_size: int = 32) -> dict:
    """IoU of the attention masks (mean over heads, and each head) vs gt [n, h, w], and chance."""
    from dinov2_jax.extract import attention_maps
    from dinov2_jax.visualize import attention_mass_mask

    att = attention_maps(model, images, block=block, batch_size=batch_size)["attention"]  # [n, heads, h, w]
    mean_mask = attention_mass_mask(att.mean(1), mass)
    head_masks = attention_mass_mask(att, mass)
    ious, chance = iou(mean_mask, gt), chance_iou(mean_mask, gt)
    gain = ious - chance
    return {"iou": float(ious.mean()), "chance_iou": float(chance.mean()),
            "frac_above_chance": float((gain > 0).mean()),
            "gain_t": float(gain.mean() / max(gain.std(ddof=1) / np.sqrt(len(gain)), 1e-12)),
            "iou_per_head": [float(v) for v in iou(head_masks, gt[:, None]).mean(0)],
            "ious": ious, "attention": att, "masks": mean_mask}


def main(argv=None) -> int:
    p = argparse.ArgumentParser("python -m dinov2_jax.eval.attention_masks",
                                description="IoU of thresholded cls attention vs synthetic objects")
    p.add_argument("--weights", default=None, help="converted dir (e.g. OUT/eval/training_299) or official .pth")
    p.add_argument("--arch", default=None)
    p.add_argument("--allow-random-init", action="store_true")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--n-images", type=int, default=100)
    p.add_argument("--photo-size", type=int, default=128, help="image size for the hand-outlined demo photos")
    p.add_argument("--mass", type=float, default=0.6)
    p.add_argument("--block", type=int, default=-1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--png", default=None, help="also draw the attention picture of the first 8 images here")
    args = p.parse_args(argv)
    from dinov2_jax.hub import load_for_eval

    model = load_for_eval(args.weights, args.arch, allow_random_init=args.allow_random_init)
    images, gt = synthetic_objects(args.n_images, args.image_size, model.patch_size, args.seed)
    r = evaluate(model, images, gt, mass=args.mass, block=args.block)
    print(f"IoU of the {args.mass:g}-mass attention mask (mean of heads) vs the pasted object, "
          f"{args.n_images} images: {r['iou']:.3f} (chance {r['chance_iou']:.3f}; above chance on "
          f"{100 * r['frac_above_chance']:.0f} % of the images, paired t = {r['gain_t']:.1f}); per head: "
          + ", ".join(f"{v:.3f}" for v in r["iou_per_head"]))
    names, photos, photo_gt = demo_photo_masks(args.photo_size, model.patch_size)
    rp = evaluate(model, photos, photo_gt, mass=args.mass, block=args.block)
    print("demo photos, IoU vs a rough hand-drawn foreground mask (chance): "
          + ", ".join(f"{n} {v:.2f} ({c:.2f})" for n, v, c in zip(names, rp["ious"],
                                                                   chance_iou(rp["masks"], photo_gt))))
    if args.png:
        from dinov2_jax.visualize import attention_picture

        attention_picture(images[:8], r["attention"][:8], fraction=args.mass, min_height=160, path=args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
