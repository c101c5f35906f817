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
The official recipe runs both PCAs over images of one kind together (its pictures show several photos of
one object class). For unrelated images the first joint component separates the photos from each other
rather than objects from their backgrounds, so `per_image=True` runs both steps on each image alone.

Also here: the DINO self-attention picture (`attention_picture`: cls attention per head, the mask keeping
a fraction of the attention mass) and the patch-token norm picture (`token_norm_picture`, high-norm
outliers); see docs/visualization.md.
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


def pca_rgb_maps(patch_tokens, threshold: float = 0.5, remove_background: bool = True, per_image: bool = False):
    """patch_tokens [B, h, w, D] -> (rgb [B, h, w, 3] in [0, 1], foreground [B, h, w] bool).

    threshold: on the min-max scaled first component (oriented so borders are low); patches above it are
    foreground. remove_background=False keeps every patch and runs one PCA for the colours. per_image: both
    PCAs on each image's patches alone (unrelated images) instead of over all images together.
    """
    tokens = np.asarray(patch_tokens, np.float64)
    if tokens.ndim != 4:
        raise ValueError(f"expected patch tokens [B, h, w, D], got shape {tokens.shape}")
    if per_image:
        maps = [pca_rgb_maps(t[None], threshold, remove_background) for t in tokens]
        return np.concatenate([m[0] for m in maps]), np.concatenate([m[1] for m in maps])
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
                     min_height: int = 0, per_image: bool = False):
    """images [B, H, W, 3] (normalised), patch_tokens [B, h, w, D] -> PNG at `path`; returns the rgb maps."""
    rgb, _ = pca_rgb_maps(patch_tokens, threshold=threshold, per_image=per_image)
    render_pca_grid(images, rgb, path, max_images=max_images, min_height=min_height)
    return rgb


# ---- self-attention maps (the DINO picture) and patch-token norms (the registers paper's artifacts) ----
def attention_mass_mask(maps, fraction: float = 0.6) -> np.ndarray:
    """maps [..., h, w] (non-negative, e.g. cls attention over patches) -> bool [..., h, w]: per map, the
    smallest set of highest-attention patches holding at least `fraction` of the map's mass.

    This is DINO's threshold (`visualize_attention.py`: sort, normalised cumulative sum, keep what lies
    above `1 - fraction`): a patch is kept when the mass of the patches strictly above it is < fraction.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    a = np.asarray(maps, np.float64)
    if a.ndim < 2:
        raise ValueError(f"expected maps [..., h, w], got shape {a.shape}")
    if (a < 0).any():
        raise ValueError("attention maps must be non-negative (softmax weights)")
    flat = a.reshape(-1, a.shape[-2] * a.shape[-1])
    flat = flat / np.maximum(flat.sum(-1, keepdims=True), 1e-30)
    order = np.argsort(-flat, axis=-1, kind="stable")
    desc = np.take_along_axis(flat, order, -1)
    keep_sorted = (np.cumsum(desc, -1) - desc) < fraction
    keep = np.zeros_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, -1)
    return keep.reshape(a.shape)


def upsample_nearest(maps, factor: int) -> np.ndarray:
    """[..., h, w] -> [..., h * factor, w * factor] (each patch value repeated over its pixels)."""
    a = np.asarray(maps)
    return np.repeat(np.repeat(a, factor, axis=-2), factor, axis=-1)


def token_norms(patch_tokens) -> np.ndarray:
    """patch_tokens [B, h, w, D] -> L2 norms [B, h, w]."""
    t = np.asarray(patch_tokens, np.float64)
    if t.ndim != 4:
        raise ValueError(f"expected patch tokens [B, h, w, D], got shape {t.shape}")
    return np.linalg.norm(t, axis=-1)


def high_norm_tokens(norms, factor: float = 3.0):
    """norms [B, h, w] -> (outliers [B, h, w] bool, fraction of outliers over all patches).

    An outlier (the registers paper's artifact token) has a norm above `factor` x the median patch-token
    norm of its image: relative, so that models (with and without registers) of any width compare.
    """
    n = np.asarray(norms, np.float64)
    med = np.median(n.reshape(n.shape[0], -1), axis=1)[:, None, None]
    out = n > factor * med
    return out, float(out.mean())


TITLE_HEIGHT = 14  # pixels of the column-title line


def colorize(values, cmap: str = "viridis", vmin=None, vmax=None) -> np.ndarray:
    """[h, w] floats -> uint8 [h, w, 3] through a matplotlib colormap (min-max scaled unless given)."""
    import matplotlib

    v = np.asarray(values, np.float64)
    lo = v.min() if vmin is None else vmin
    hi = v.max() if vmax is None else vmax
    v = np.clip((v - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    return (matplotlib.colormaps[cmap](v)[..., :3] * 255).round().astype(np.uint8)


def _grid(rows, pad: int = 4, titles=None) -> Image.Image:
    """rows: lists of equally sized uint8 [H, W, 3] panels -> one white-padded picture, with a line of
    column `titles` on top when given."""
    from PIL import ImageDraw

    hh, ww = rows[0][0].shape[:2]
    ncol = max(len(r) for r in rows)
    top = TITLE_HEIGHT if titles else 0
    canvas = Image.new("RGB", (ncol * ww + (ncol + 1) * pad, top + len(rows) * hh + (len(rows) + 1) * pad),
                       (255, 255, 255))
    for j, title in enumerate(titles or []):
        ImageDraw.Draw(canvas).text((pad + j * (ww + pad) + 2, 3), title, fill=(0, 0, 0))
    for i, row in enumerate(rows):
        for j, panel in enumerate(row):
            canvas.paste(Image.fromarray(panel), (pad + j * (ww + pad), top + pad + i * (hh + pad)))
    return canvas


def _display_inputs(images, min_height: int):
    """Normalised [B, H, W, 3] -> (uint8 panels at display size, zoom)."""
    ims = denormalize(images)
    h0, w0 = ims.shape[1:3]
    zoom = max(1, -(-min_height // h0))
    if zoom > 1:
        ims = np.stack([np.asarray(Image.fromarray(i).resize((w0 * zoom, h0 * zoom), Image.BICUBIC)) for i in ims])
    return ims, zoom


def _patch_panel(values, shape, cmap, vmin=None, vmax=None) -> np.ndarray:
    """[h, w] patch values -> colour panel of `shape` (H, W), nearest upsampled (H, W multiples of h, w)."""
    rgb = colorize(values, cmap, vmin, vmax)
    return upsample_nearest(rgb.transpose(2, 0, 1), shape[0] // rgb.shape[0]).transpose(1, 2, 0)


def _norm_panel(norms, outliers, shape) -> np.ndarray:
    """Norm map (inferno, scaled to this image) with each outlier patch outlined in cyan."""
    panel = _patch_panel(norms, shape, "inferno").copy()
    s = shape[0] // norms.shape[0]
    for y, x in zip(*np.nonzero(outliers)):
        box = panel[y * s:(y + 1) * s, x * s:(x + 1) * s]
        box[0, :] = box[-1, :] = box[:, 0] = box[:, -1] = (0, 255, 255)
    return panel


def attention_picture(images, attention, *, fraction: float = 0.6, heads=None, patch_tokens=None,
                      norm_factor: float = 3.0, min_height: int = 0, max_images: int = 32, titles: bool = True,
                      path: str | None = None) -> Image.Image:
    """The DINO self-attention picture; returns a PIL image (shown inline in a notebook), saved if `path`.

    images [B, H, W, 3] ImageNet-normalised; attention [B, heads, h, w] = the cls token's attention over
    the patches (`DinoVisionTransformer.get_cls_attention_maps(x)["patches"]`). One row per image:
    input | each shown head's map (own min-max scale, viridis) | the input kept where the mask of the
    mean over the shown heads holds `fraction` of the attention mass (`attention_mass_mask`; the rest
    faded to white) | with `patch_tokens` [B, h, w, D]: their norm map (`token_norm_picture`'s panel).
    `heads`: indices of the heads shown (default all). Images below `min_height` are enlarged.
    `titles`: a line naming the columns on top.
    """
    att = np.asarray(attention, np.float64)[:max_images]
    if att.ndim != 4:
        raise ValueError(f"expected attention [B, heads, h, w], got shape {att.shape}")
    heads = list(range(att.shape[1])) if heads is None else [int(h) for h in heads]
    bad = [h for h in heads if not 0 <= h < att.shape[1]]
    if bad or not heads:
        raise ValueError(f"heads {heads} invalid: the model has {att.shape[1]} heads (0..{att.shape[1] - 1})")
    ims, _ = _display_inputs(np.asarray(images)[:len(att)], min_height)
    shape = ims.shape[1:3]
    if shape[0] % att.shape[2] or shape[1] % att.shape[3]:
        raise ValueError(f"images {shape} are not a whole number of patches of the {att.shape[2:]} maps")
    masks = attention_mass_mask(att[:, heads].mean(1), fraction)
    if patch_tokens is not None:
        norms = token_norms(np.asarray(patch_tokens)[:len(att)])
        outliers, _ = high_norm_tokens(norms, norm_factor)
    rows = []
    for i in range(len(att)):
        row = [ims[i]] + [_patch_panel(att[i, h], shape, "viridis") for h in heads]
        keep = upsample_nearest(masks[i], shape[0] // masks.shape[1])[..., None]
        row.append(np.where(keep, ims[i], (0.3 * ims[i] + 0.7 * 255).astype(np.uint8)))
        if patch_tokens is not None:
            row.append(_norm_panel(norms[i], outliers[i], shape))
        rows.append(row)
    names = ["input"] + [f"head {h}" for h in heads] + [f"mask {100 * fraction:g}% mass"]
    pic = _grid(rows, titles=(names + ["token norm"] * (patch_tokens is not None)) if titles else None)
    if path:
        pic.save(path)
    return pic


def token_norm_picture(images, patch_tokens, *, factor: float = 3.0, min_height: int = 0, max_images: int = 32,
                       titles: bool = True, path: str | None = None) -> Image.Image:
    """Patch-token norms (the registers paper's high-norm artifacts); returns a PIL image, saved if `path`.

    Row per image: input | norm of each patch token (inferno, scaled per image), the outliers of
    `high_norm_tokens(norms, factor)` outlined in cyan. patch_tokens [B, h, w, D].
    """
    norms = token_norms(np.asarray(patch_tokens)[:max_images])
    outliers, _ = high_norm_tokens(norms, factor)
    ims, _ = _display_inputs(np.asarray(images)[:len(norms)], min_height)
    if ims.shape[1] % norms.shape[1]:
        raise ValueError(f"images {ims.shape[1:3]} are not a whole number of patches of the {norms.shape[1:]} grid")
    pic = _grid([[ims[i], _norm_panel(norms[i], outliers[i], ims.shape[1:3])] for i in range(len(norms))],
                titles=["input", f"token norm (> {factor:g}x median)"] if titles else None)
    if path:
        pic.save(path)
    return pic
