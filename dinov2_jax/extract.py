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
With --classifier HEAD.pth (an official hub `*_linear[4]_head.pth`) also `logits` [N, C], each image's top-5
ImageNet classes printed (see dinov2_jax/hub_classifiers.py).

--attention-png draws the DINO self-attention picture of the first --attention-max-images images (the
cls token's attention per head in one block, its thresholded mask, the patch-token norms; see
docs/visualization.md) and prints the fraction of high-norm outlier patch tokens.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

import jax
import numpy as np

from dinov2_jax.data.sources import list_images
from dinov2_jax.padding import pad_rows

logger = logging.getLogger("dinov2_jax.extract")

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


def make_attention_fn(model, block: int = -1):
    """Jitted `images [B, H, W, 3] -> {"attention" [B, heads, h, w], "register_attention" [B, heads, R],
    "patch_tokens" [B, N, D]}`: the cls token's attention in `block` (explicit-softmax path,
    `get_cls_attention_maps`) and the output patch tokens (after the final norm)."""
    from dinov2_jax.pretrained import jit_module

    def fn(m, images):
        maps = m.get_cls_attention_maps(images, block)
        return {"attention": maps["patches"], "register_attention": maps["registers"],
                "patch_tokens": m.forward_features(images)["x_norm_patchtokens"]}

    return jit_module(model, fn)


def attention_maps(model, images, *, block: int = -1, batch_size: int = 32) -> dict:
    """`make_attention_fn` over normalised images [B, H, W, 3] in batches -> numpy dict, patch_tokens
    reshaped to [B, h, w, D]."""
    fn = make_attention_fn(model, block)
    outs = [jax.device_get(fn(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]
    res = {k: np.concatenate([np.asarray(o[k], np.float32) for o in outs]) for k in outs[0]}
    b, h, w = res["attention"].shape[0], *res["attention"].shape[2:]
    res["patch_tokens"] = res["patch_tokens"].reshape(b, h, w, -1)
    return res


def parse_heads(spec: str | None, num_heads: int) -> list[int]:
    """"all"/None -> every head; "0,2,5" -> those heads (checked against the model's num_heads)."""
    if spec is None or spec == "all":
        return list(range(num_heads))
    try:
        heads = [int(h) for h in spec.split(",") if h.strip()]
    except ValueError:
        raise ValueError(f"--attention-heads {spec!r}: give comma-separated head indices (e.g. 0,1,2) or 'all'")
    bad = [h for h in heads if not 0 <= h < num_heads]
    if bad or not heads:
        raise ValueError(f"--attention-heads {spec!r}: the model has {num_heads} heads (0..{num_heads - 1})")
    return heads


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
        batch = pad_rows(batch, batch_size)  # one compiled shape for every batch
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
    p.add_argument("--pca-per-image", action="store_true",
                   help="one PCA per image (unrelated photos) instead of one over all pictured images "
                        "(the official picture: several images of one kind)")
    p.add_argument("--attention-png", default=None,
                   help="write the self-attention picture here (input, cls attention per head, mask, token norms)")
    p.add_argument("--attention-block", type=int, default=-1, help="block whose attention is drawn (-1: last)")
    p.add_argument("--attention-heads", default="all", help="heads shown, e.g. 0,1,2 (default all)")
    p.add_argument("--attention-mass", type=float, default=0.6,
                   help="the mask keeps the top patches holding this fraction of the attention mass (DINO: 0.6)")
    p.add_argument("--attention-max-images", type=int, default=8, help="rows in the attention picture")
    p.add_argument("--norm-outlier-factor", type=float, default=3.0,
                   help="a patch token is a high-norm outlier above this factor x its image's median norm")
    p.add_argument("--classifier", default=None, help="official *_linear[4]_head.pth: print each image's "
                   "top-5 ImageNet classes and save `logits` [N, 1000] (see dinov2_jax/hub_classifiers.py)")
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
        batch = pad_rows(batch, batch_size)  # one compiled shape for every batch
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
    if args.classifier and args.linear_head:
        raise SystemExit("give --classifier (official hub head) or --linear-head (linear probe head), not both")
    model = load_for_eval(args.weights, args.arch, allow_random_init=args.allow_random_init, dtype=args.dtype)
    want_patches = args.patch_tokens or args.pca_png is not None
    heads = None
    if args.attention_png:  # check the attention options before the (long) extraction
        heads = parse_heads(args.attention_heads, model.num_heads)
        if not -model.n_blocks <= args.attention_block < model.n_blocks:
            raise SystemExit(f"--attention-block {args.attention_block} out of range: the model has "
                             f"{model.n_blocks} blocks (0..{model.n_blocks - 1}, or -1 for the last)")
        if not 0.0 < args.attention_mass <= 1.0:
            raise SystemExit(f"--attention-mass {args.attention_mass} must be in (0, 1]")
    res = extract_folder(model, args.images, batch_size=args.batch_size, image_size=args.image_size,
                         keep_patch_tokens=want_patches,
                         keep_images=max(args.pca_max_images if args.pca_png else 0,
                                         args.attention_max_images if args.attention_png else 0))
    images = res.pop("images", None)
    if args.linear_head:
        pred = classify_folder(model, args.linear_head, args.images, batch_size=args.batch_size,
                               image_size=args.image_size)
        res.update(logits=pred["logits"], predictions=pred["predictions"])
        for f, c in list(zip(pred["files"], pred["predictions"]))[:10]:
            print(f"{f}: {c}")
    if args.classifier:
        from dinov2_jax.hub_classifiers import classify_with_head_file

        res["logits"] = classify_with_head_file(model, args.classifier, args.images, list(res["files"]),
                                                batch_size=args.batch_size, image_size=args.image_size)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez(args.out, **res)
    logger.info("wrote %s: %s", args.out, {k: v.shape for k, v in res.items()})
    if args.pca_png:
        from dinov2_jax.visualize import save_pca_picture

        n = min(args.pca_max_images, len(images))
        # PCA is fitted on the patches of the pictured images only, so the colours match what is shown
        save_pca_picture(images[:n], res["patch_tokens"][:n], args.pca_png, threshold=args.pca_threshold,
                         max_images=n, per_image=args.pca_per_image)
        logger.info("wrote PCA picture %s (%d images)", args.pca_png, n)
    if args.attention_png:
        write_attention_picture(model, images[:args.attention_max_images], args, heads)
    return 0


def write_attention_picture(model, images, args, heads: list[int]) -> dict:
    """The --attention-png picture and the printed high-norm token fraction; returns the maps."""
    from dinov2_jax.visualize import attention_picture, high_norm_tokens, token_norms

    maps = attention_maps(model, images, block=args.attention_block, batch_size=args.batch_size)
    attention_picture(images, maps["attention"], fraction=args.attention_mass,
                      heads=heads, patch_tokens=maps["patch_tokens"],
                      norm_factor=args.norm_outlier_factor, min_height=160, path=args.attention_png)
    outliers, frac = high_norm_tokens(token_norms(maps["patch_tokens"]), args.norm_outlier_factor)
    block = args.attention_block % model.n_blocks
    logger.info("wrote attention picture %s (%d images, block %d)", args.attention_png, len(images), block)
    line = (f"high-norm patch tokens: {100 * frac:.2f} % ({int(outliers.sum())} of {outliers.size}; "
            f"norm > {args.norm_outlier_factor:g} x the image's median) in {len(images)} images")
    if model.num_register_tokens:  # how much of the cls token's attention the registers take
        line += (f"; cls attention on the {model.num_register_tokens} registers in block {block}: "
                 f"{100 * maps['register_attention'].sum(-1).mean():.1f} %")
    print(line)
    return maps


if __name__ == "__main__":
    sys.exit(main())
