"""Feature extraction CLI: images in a folder -> DINOv2 features in an .npz (+ optional PCA picture).

  python -m dinov2_jax.extract --weights W --images DIR --out feats.npz \
      [--arch dinov2_vits14] [--batch-size 32] [--image-size 224] [--patch-tokens] [--pca-png out.png]

Preprocessing is the official eval transform: resize the shorter side to 256 (bicubic; scaled as
image_size * 256/224 for other sizes), center crop `image_size`, ImageNet normalisation.
The .npz holds `cls` [N, D] (final-norm cls token), `files` [N] (paths relative to DIR, sorted),
`patch_tokens` [N, h, w, D] when --patch-tokens (or needed for --pca-png, then saved too) and
`register_tokens` [N, R, D] for register models; with --linear-head H (a linear probe's
`best_linear_head.npz`) also `logits` [N, C] and `predictions` [N] (class names). Images that cannot be
decoded are skipped with a warning each and counted; their paths are saved as `skipped_files` (present
only then; they are left out of `files`).
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
    """Path -> eval-transformed float32 [image_size, image_size, 3] (decoded as the data sources do,
    incl. 16-bit grayscale scaled to 8 bits)."""
    from dinov2_jax.data.augmentations import eval_resize_size, eval_transform
    from dinov2_jax.data.sources import decode_image

    resize_size = resize_size or eval_resize_size(image_size)
    return eval_transform(decode_image(path), resize_size=resize_size, crop_size=image_size)


def make_extract_fn(model):
    """Jitted `images [B, H, W, 3] -> {"cls" [B, D], "patch_tokens" [B, N, D], "register_tokens" [B, R, D]}`."""
    from dinov2_jax.pretrained import backbone_features, jit_module

    return jit_module(model, backbone_features)


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
    kept, skipped = [], []
    for start in tqdm(range(0, len(files), batch_size), desc="extract", disable=not progress):
        names, loaded = [], []
        for f in files[start : start + batch_size]:
            try:
                loaded.append(load_image(os.path.join(images_dir, f), image_size))
            except Exception as e:  # noqa: BLE001 - any decode failure: skip the file, count it, go on
                skipped.append(f)
                logger.warning("skipping unreadable image %s (%s: %s); %d skipped so far", f, type(e).__name__, e,
                               len(skipped))
                continue
            names.append(f)
        if not names:
            continue
        kept.extend(names)
        batch = np.stack(loaded)
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
    if not kept:
        raise ValueError(f"none of the {len(files)} images under {images_dir!r} could be decoded "
                         f"(see the warnings above)")
    if skipped:
        logger.warning("%d of %d images could not be decoded and were skipped (listed in skipped_files)",
                       len(skipped), len(files))
    result = {"cls": np.concatenate(cls), "files": np.asarray(kept)}
    if skipped:
        result["skipped_files"] = np.asarray(skipped)
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
    p.add_argument("--linear-head", default=None,
                   help="best_linear_head.npz of a linear probe (eval.linear --output-dir): also save logits "
                        "and predicted classes")
    p.add_argument("--pca-png", default=None, help="write the PCA-of-patch-features picture here")
    p.add_argument("--pca-threshold", type=float, default=0.5,
                   help="foreground threshold on the min-max scaled first PCA component")
    p.add_argument("--pca-max-images", type=int, default=16, help="rows in the PCA picture")
    return p


def classify_folder(model, head_path: str, images_dir: str, *, batch_size: int = 32,
                    image_size: int | None = None, progress: bool = True) -> dict:
    """Classify every image of a folder with a linear head saved by the linear probe
    (`best_linear_head.npz`). Returns {"logits" [N, C], "predictions" [N] (class names when the head has
    them, else indices), "files" [N]}. image_size defaults to the head's training size."""
    from tqdm.auto import tqdm

    from dinov2_jax.eval.linear import linear_head_logits, load_linear_head, make_linear_feature_fn

    head = load_linear_head(head_path)
    image_size = image_size or head.image_size
    files = list_images(images_dir)
    fn = make_linear_feature_fn(model, head.use_n_blocks)
    logits = []
    for start in tqdm(range(0, len(files), batch_size), desc="classify", disable=not progress):
        names = files[start : start + batch_size]
        batch = np.stack([load_image(os.path.join(images_dir, f), image_size, head.resize_size * image_size
                                     // head.image_size) for f in names])
        n = len(names)
        if n < batch_size:  # pad: one compiled shape for every batch
            batch = np.concatenate([batch, np.zeros((batch_size - n,) + batch.shape[1:], batch.dtype)])
        logits.append(linear_head_logits(head, jax.device_get(fn(batch)))[:n])
    logits = np.concatenate(logits).astype(np.float32)
    best = logits.argmax(axis=1)
    preds = np.asarray(head.classes)[best] if head.classes else best
    return {"logits": logits, "predictions": preds, "files": np.asarray(files)}


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
    if args.linear_head:
        pred = classify_folder(model, args.linear_head, args.images, batch_size=args.batch_size,
                               image_size=args.image_size)
        res.update(logits=pred["logits"], predictions=pred["predictions"])
        for f, c in list(zip(pred["files"], pred["predictions"]))[:10]:
            print(f"{f}: {c}")
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
