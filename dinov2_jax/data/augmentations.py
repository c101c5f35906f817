"""DINOv2 multi-crop augmentation (spec 5.1) on PIL images, driven by a numpy Generator.

Every photometric / geometric op reproduces the torchvision op the official recipe uses on PIL
images (same PIL calls where torchvision calls PIL, same float32 math where it uses tensors), so a
crop produced here with a given set of sampled parameters equals torchvision's to within uint8
rounding (see tests/data/test_augmentations.py). Randomness comes from a `np.random.Generator`
(Grain's `random_map` hands one per element), never from global state, so the output is a pure
function of (image, generator state).

Gaussian blur probabilities: the official `GaussianBlur(p)` wrapper passes `1 - p` to torchvision's
`RandomApply`, which applies the blur *with* the probability it is given. The official call sites
pass p=1.0 / 0.1 / 0.5, so the effective blur probabilities of the released recipe are
**0.0 for global crop 1, 0.9 for global crop 2 and 0.5 for local crops**. We use the effective
values (`BLUR_PROB_*` below), i.e. we match what the released checkpoints were trained with.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageOps
from scipy.ndimage import correlate1d

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# Effective probabilities of the official recipe (see module docstring).
BLUR_PROB_GLOBAL1 = 0.0
BLUR_PROB_GLOBAL2 = 0.9
BLUR_PROB_LOCAL = 0.5
SOLARIZE_PROB_GLOBAL2 = 0.2
COLOR_JITTER_PROB = 0.8
GRAYSCALE_PROB = 0.2
HFLIP_PROB = 0.5
BLUR_KERNEL_SIZE = 9
BLUR_SIGMA = (0.1, 2.0)
JITTER = dict(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)


def to_pil_rgb(image) -> Image.Image:
    """PIL image (any mode) or uint8 array [H, W] / [H, W, 3|4] -> PIL RGB image."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise TypeError(f"expected a PIL image or a uint8 array, got an array of dtype {arr.dtype}; "
                        "convert with np.clip(x, 0, 255).astype(np.uint8) first")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        return Image.fromarray(arr, "L").convert("RGB")
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        return Image.fromarray(np.ascontiguousarray(arr[..., :3]), "RGB")
    raise ValueError(f"expected an image array [H, W] or [H, W, 3|4], got shape {arr.shape}")


# ----------------------------------------------------------------------------- geometric ops


def sample_resized_crop_params(rng: np.random.Generator, width: int, height: int,
                               scale: Sequence[float], ratio: Sequence[float] = (3 / 4, 4 / 3)):
    """torchvision RandomResizedCrop.get_params algorithm -> (top, left, h, w).

    10 attempts: area fraction U(scale), aspect exp(U(log ratio)); accept if the box fits;
    else a center crop clamped to the ratio range (the whole image if its ratio is inside).
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resized_crop(img: Image.Image, top: int, left: int, h: int, w: int, size: int) -> Image.Image:
    """Crop box (top, left, h, w) then bicubic resize to [size, size] (as torchvision on PIL)."""
    return img.crop((left, top, left + w, top + h)).resize((size, size), Image.BICUBIC)


def hflip(img: Image.Image) -> Image.Image:
    return img.transpose(Image.FLIP_LEFT_RIGHT)


# ----------------------------------------------------------------------------- photometric ops


def adjust_brightness(img: Image.Image, factor: float) -> Image.Image:
    return ImageEnhance.Brightness(img).enhance(factor)


def adjust_contrast(img: Image.Image, factor: float) -> Image.Image:
    return ImageEnhance.Contrast(img).enhance(factor)


def adjust_saturation(img: Image.Image, factor: float) -> Image.Image:
    return ImageEnhance.Color(img).enhance(factor)


def adjust_hue(img: Image.Image, hue_factor: float) -> Image.Image:
    """Rotate the PIL HSV hue channel by hue_factor * 255 (uint8 wrap-around, as torchvision)."""
    if not -0.5 <= hue_factor <= 0.5:
        raise ValueError(f"hue_factor must be in [-0.5, 0.5], got {hue_factor}")
    h, s, v = img.convert("HSV").split()
    # int() truncates toward zero like the float->uint8 cast torchvision relies on; the modulo
    # gives the same uint8 wrap-around for negative shifts.
    shift = int(hue_factor * 255) % 256
    np_h = np.asarray(h, dtype=np.uint8) + np.uint8(shift)
    return Image.merge("HSV", (Image.fromarray(np_h, "L"), s, v)).convert("RGB")


def to_grayscale_rgb(img: Image.Image) -> Image.Image:
    """ITU-R 601-2 luma (PIL "L") replicated to 3 channels."""
    return img.convert("L").convert("RGB")


def solarize(img: Image.Image, threshold: int = 128) -> Image.Image:
    """Invert every pixel value >= threshold."""
    return ImageOps.solarize(img, threshold)


def gaussian_kernel1d(kernel_size: int, sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian [kernel_size] float32 on integer offsets (torchvision's kernel)."""
    half = (kernel_size - 1) * 0.5
    x = np.linspace(-half, half, kernel_size, dtype=np.float32)
    pdf = np.exp(-0.5 * (x / np.float32(sigma)) ** 2).astype(np.float32)
    return pdf / pdf.sum(dtype=np.float32)


def gaussian_blur(img: Image.Image, sigma: float, kernel_size: int = BLUR_KERNEL_SIZE) -> Image.Image:
    """Separable float32 Gaussian blur with reflect padding, rounded half-to-even back to uint8.

    torchvision convolves the PIL image (as a uint8 tensor) in float32 with the outer product of
    the same 1-D kernel, reflect padding, then rounds. Doing it separably is the same filter (sums in
    a different order, so at most 1 uint8 level off on rare pixels).
    """
    arr = np.asarray(img, dtype=np.float32)
    k = gaussian_kernel1d(kernel_size, sigma)
    # scipy "mirror" = reflect without repeating the edge pixel = torch's "reflect" padding.
    out = correlate1d(arr, k, axis=0, mode="mirror")
    out = correlate1d(out, k, axis=1, mode="mirror")
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB")


def normalize(img: Image.Image) -> np.ndarray:
    """PIL RGB -> ImageNet-normalised float32 [H, W, 3] (ToTensor + Normalize, channel-last)."""
    arr = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    return (arr - IMAGENET_MEAN) / IMAGENET_STD


# ----------------------------------------------------------------------------- composed ops


def color_jitter(img: Image.Image, rng: np.random.Generator, brightness=0.4, contrast=0.4,
                 saturation=0.2, hue=0.1) -> Image.Image:
    """torchvision ColorJitter: factors b,c,s ~ U(1-x, 1+x), hue ~ U(-x, x), ops in random order."""
    order = rng.permutation(4)
    b = rng.uniform(1 - brightness, 1 + brightness)
    c = rng.uniform(1 - contrast, 1 + contrast)
    s = rng.uniform(1 - saturation, 1 + saturation)
    h = rng.uniform(-hue, hue)
    for op in order:
        if op == 0:
            img = adjust_brightness(img, b)
        elif op == 1:
            img = adjust_contrast(img, c)
        elif op == 2:
            img = adjust_saturation(img, s)
        else:
            img = adjust_hue(img, h)
    return img


def _photometric(img: Image.Image, rng: np.random.Generator, blur_prob: float,
                 solarize_prob: float) -> Image.Image:
    """Color jitter (p=0.8) -> grayscale (p=0.2) -> blur (blur_prob) -> solarize (solarize_prob)."""
    if rng.random() < COLOR_JITTER_PROB:
        img = color_jitter(img, rng, **JITTER)
    if rng.random() < GRAYSCALE_PROB:
        img = to_grayscale_rgb(img)
    if blur_prob > 0 and rng.random() < blur_prob:
        img = gaussian_blur(img, rng.uniform(*BLUR_SIGMA))
    if solarize_prob > 0 and rng.random() < solarize_prob:
        img = solarize(img, 128)
    return img


def _geometric(img: Image.Image, rng: np.random.Generator, size: int, scale) -> Image.Image:
    top, left, h, w = sample_resized_crop_params(rng, img.width, img.height, scale)
    img = resized_crop(img, top, left, h, w, size)
    if rng.random() < HFLIP_PROB:
        img = hflip(img)
    return img


@dataclass(frozen=True)
class DataAugmentationDINO:
    """Multi-crop augmentation of spec 5.1 (official effective blur probabilities 0 / 0.9 / 0.5).

    `aug(image, rng)` -> {"global_crops": [2, S, S, 3] float32, "local_crops": [n, s, s, 3] float32},
    ImageNet-normalised, channel-last. image: PIL image or uint8 [H, W(, C)].
    """

    global_crops_scale: tuple = (0.32, 1.0)
    local_crops_scale: tuple = (0.05, 0.32)
    local_crops_number: int = 8
    global_crops_size: int = 224
    local_crops_size: int = 96

    def __post_init__(self):
        for name in ("global_crops_scale", "local_crops_scale"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"{name} must satisfy 0 < min <= max <= 1, got {(lo, hi)}")
        if self.local_crops_number < 0:
            raise ValueError(f"local_crops_number must be >= 0, got {self.local_crops_number}")
        if self.global_crops_size <= 0 or self.local_crops_size <= 0:
            raise ValueError("crop sizes must be positive")

    @classmethod
    def from_config(cls, crops_cfg) -> "DataAugmentationDINO":
        """Build from `cfg.crops` (keys as the official config)."""
        return cls(tuple(crops_cfg.global_crops_scale), tuple(crops_cfg.local_crops_scale),
                   int(crops_cfg.local_crops_number), int(crops_cfg.global_crops_size),
                   int(crops_cfg.local_crops_size))

    def __call__(self, image, rng: np.random.Generator) -> dict:
        img = to_pil_rgb(image)
        g1 = _photometric(_geometric(img, rng, self.global_crops_size, self.global_crops_scale), rng,
                          BLUR_PROB_GLOBAL1, 0.0)
        g2 = _photometric(_geometric(img, rng, self.global_crops_size, self.global_crops_scale), rng,
                          BLUR_PROB_GLOBAL2, SOLARIZE_PROB_GLOBAL2)
        s = self.local_crops_size
        local = np.empty((self.local_crops_number, s, s, 3), np.float32)
        for i in range(self.local_crops_number):
            crop = _photometric(_geometric(img, rng, s, self.local_crops_scale), rng, BLUR_PROB_LOCAL, 0.0)
            local[i] = normalize(crop)
        return {"global_crops": np.stack([normalize(g1), normalize(g2)]), "local_crops": local}


# ----------------------------------------------------------------------------- evaluation


def eval_resize_size(crop_size: int) -> int:
    """Official resize-then-crop ratio 256/224, for any crop size (224 -> 256, 518 -> 592)."""
    return int(round(crop_size * 256 / 224))


def eval_transform(image, resize_size: int = 256, crop_size: int = 224) -> np.ndarray:
    """Official eval transform: Resize(shorter side -> resize_size, bicubic), CenterCrop, normalise.

    image: PIL image or uint8 [H, W(, C)] -> float32 [crop_size, crop_size, 3].
    """
    img = to_pil_rgb(image)
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = resize_size, int(resize_size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.BICUBIC)
    if new_w < crop_size or new_h < crop_size:
        # torchvision pads with zeros before cropping when the crop is larger than the image.
        pw, ph = max(crop_size - new_w, 0), max(crop_size - new_h, 0)
        canvas = Image.new("RGB", (new_w + pw, new_h + ph))
        canvas.paste(img, (pw // 2, ph // 2))
        img, (new_w, new_h) = canvas, canvas.size
    top = int(round((new_h - crop_size) / 2.0))
    left = int(round((new_w - crop_size) / 2.0))
    return normalize(img.crop((left, top, left + crop_size, top + crop_size)))
