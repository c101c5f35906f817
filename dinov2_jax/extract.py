"""Feature extraction CLI: images in a folder -> DINOv2 features in an .npz (+ optional PCA picture).

  python -m dinov2_jax.extract --weights W --images DIR --out feats.npz \
      [--arch dinov2_vits14] [--batch-size 32] [--image-size 224] [--patch-tokens] [--pca-png out.png]

Preprocessing is the official eval transform: resize the shorter side to 256 (bicubic; scaled as
image_size * 256/224 for other sizes), center crop `image_size`, ImageNet normalisation.
The .npz holds `cls` [N, D] (final-norm cls token), `files` [N] (paths relative to DIR, sorted),
`patch_tokens` [N, h, w, D] when --patch-tokens (or needed for --pca-png, then saved too) and
`register_tokens` [N, R, D] for register models; with --classifier HEAD.pth also `logits` [N, C] (top-5
classes printed).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

import jax
import numpy as np

logger = logging.getLogger("dinov2_jax.extract")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def list_images(root: str) -> list[str]:
    """Image files under `root` (recursive), as sorted paths relative to root."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"--images {root!r} is not a directory")
    out = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.lower().endswith(IMAGE_EXTENSIONS):
                out.append(os.path.relpath(os.path.join(dirpath, f), root))
    if not out:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {root!r}")
    return sorted(out)


def load_image(path: str, image_size: int = 224, resize_size: int | None = None) -> np.ndarray:
    """Path -> eval-transformed float32 [image_size, image_size, 3]."""
    from PIL import Image

    from dinov2_jax.data.augmentations import eval_resize_size, eval_transform

    resize_size = resize_size or eval_resize_size(image_size)
    with Image.open(path) as img:
        return eval_transform(img.convert("RGB"), resize_size=resize_size, crop_size=image_size)


def make_extract_fn(model):
    """Jitted `images [B, H, W, 3] -> {"cls" [B, D], "patch_tokens" [B, N, D], "register_tokens" [B, R, D]}`."""
    from flax import nnx

    graphdef, state = nnx.split(model)

    @jax.jit
    def fn(state, images):
        out = nnx.merge(graphdef, state).forward_features(images)
        return {"cls": out["x_norm_clstoken"], "patch_tokens": out["x_norm_patchtokens"],
                "register_tokens": out["x_norm_regtokens"]}

    return lambda images: fn(state, images)


def extract_folder(model, images_dir: str, *, batch_size: int = 32, image_size: int = 224,
                   keep_patch_tokens: bool = False, keep_images: int = 0, progress: bool = True) -> dict:
    """Run the backbone over every image of a folder. Returns a dict of numpy arrays (see module doc);
    with keep_images > 0 also "images" [keep_images, S, S, 3] (the first normalised network inputs)."""
    from tqdm.auto import tqdm

    patch = model.patch_size
    if image_size % patch:
        raise ValueError(f"--image-size {image_size} is not a multiple of the patch size {patch}; "
                         f"use {image_size // patch * patch} or {(image_size // patch + 1) * patch}")
    files = list_images(images_dir)
    fn = make_extract_fn(model)
    grid = image_size // patch
    cls, patches, regs, ims = [], [], [], []
    for start in tqdm(range(0, len(files), batch_size), desc="extract", disable=not progress):
        names = files[start : start + batch_size]
        batch = np.stack([load_image(os.path.join(images_dir, f), image_size) for f in names])
        n = len(names)
        if n < batch_size:  # pad: one compiled shape for every batch
            batch = np.concatenate([batch, np.zeros((batch_size - n,) + batch.shape[1:], batch.dtype)])
        out = jax.device_get(fn(batch))
        cls.append(np.asarray(out["cls"][:n], np.float32))
        regs.append(np.asarray(out["register_tokens"][:n], np.float32))
        if keep_patch_tokens:
            p = np.asarray(out["patch_tokens"][:n], np.float32)
            patches.append(p.reshape(n, grid, grid, -1))
        if sum(len(i) for i in ims) < keep_images:
            ims.append(batch[:n])
    result = {"cls": np.concatenate(cls), "files": np.asarray(files)}
    if model.num_register_tokens:
        result["register_tokens"] = np.concatenate(regs)
    if keep_patch_tokens:
        result["patch_tokens"] = np.concatenate(patches)
    if keep_images:
        result["images"] = np.concatenate(ims)[:keep_images]
    return result


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m dinov2_jax.extract", description="Extract DINOv2 features (JAX)")
    p.add_argument("--weights", default=None, help="converted checkpoint dir or official .pth")
    p.add_argument("--arch", default=None, help="hub name (dinov2_vits14, ..., dinov2_vitg14_reg); "
                                               "default: read from the weights")
    p.add_argument("--allow-random-init", action="store_true", help="use a random-init --arch model (testing)")
    p.add_argument("--images", required=True, help="folder of images (searched recursively)")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=224, help="center-crop size (multiple of the patch size)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--patch-tokens", action="store_true", help="also save patch tokens [N, h, w, D]")
    p.add_argument("--pca-png", default=None, help="write the PCA-of-patch-features picture here")
    p.add_argument("--pca-threshold", type=float, default=0.5,
                   help="foreground threshold on the min-max scaled first PCA component")
    p.add_argument("--pca-max-images", type=int, default=16, help="rows in the PCA picture")
    p.add_argument("--classifier", default=None, help="official *_linear[4]_head.pth: print each image's "
                   "top-5 ImageNet classes and save `logits` [N, 1000] (see dinov2_jax/hub_classifiers.py)")
    return p


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = get_args_parser().parse_args(argv)
    from dinov2_jax.hub import load_for_eval

    if not args.out.endswith(".npz"):
        raise SystemExit(f"--out {args.out!r} must end with .npz")
    model = load_for_eval(args.weights, args.arch, allow_random_init=args.allow_random_init, dtype=args.dtype)
    want_patches = args.patch_tokens or args.pca_png is not None
    res = extract_folder(model, args.images, batch_size=args.batch_size, image_size=args.image_size,
                         keep_patch_tokens=want_patches,
                         keep_images=args.pca_max_images if args.pca_png else 0)
    images = res.pop("images", None)
    if args.classifier:
        from dinov2_jax.hub_classifiers import classify_with_head_file

        res["logits"] = classify_with_head_file(model, args.classifier, args.images, res["files"],
                                                batch_size=args.batch_size, image_size=args.image_size)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez(args.out, **res)
    logger.info("wrote %s: %s", args.out, {k: v.shape for k, v in res.items()})
    if args.pca_png:
        from dinov2_jax.visualize import save_pca_picture

        n = min(args.pca_max_images, len(images))
        # PCA is fitted on the patches of the pictured images only, so the colours match what is shown
        save_pca_picture(images[:n], res["patch_tokens"][:n], args.pca_png, threshold=args.pca_threshold,
                         max_images=n)
        logger.info("wrote PCA picture %s (%d images)", args.pca_png, n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
