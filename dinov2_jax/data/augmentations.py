"""DINOv2 multi-crop augmentation (official `dinov2/data/augmentations.py`) on PIL images, driven by a numpy Generator.

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
DINO v1 (`utils.GaussianBlur` in facebookresearch/dino) applies its p as given: 1.0 / 0.1 / 0.5. Both are
config keys (`crops.blur_probs`, `crops.solarize_prob`, see configs/dino_vits16.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageOps
from scipy.ndimage import correlate1d

from dinov2_jax.data.sources import to_pil_rgb

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


def hue_shift(hue_factor: float) -> int:
    """Hue factor in [-0.5, 0.5] -> the uint8 shift [0, 255] added (mod 256) to the PIL HSV hue channel."""
    # int() truncates toward zero like the float->uint8 cast torchvision relies on; the modulo
    # gives the same uint8 wrap-around for negative shifts.
    return int(hue_factor * 255) % 256


def adjust_hue(img: Image.Image, hue_factor: float) -> Image.Image:
    """Rotate the PIL HSV hue channel by hue_factor * 255 (uint8 wrap-around, as torchvision)."""
    if not -0.5 <= hue_factor <= 0.5:
        raise ValueError(f"hue_factor must be in [-0.5, 0.5], got {hue_factor}")
    h, s, v = img.convert("HSV").split()
    np_h = np.asarray(h, dtype=np.uint8) + np.uint8(hue_shift(hue_factor))
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


@dataclass(frozen=True)
class PhotometricParams:
    """Sampled photometric parameters of one crop (what `sample_photometric` draws, in draw order)."""

    jitter_apply: bool
    jitter_order: tuple  # permutation of (0 brightness, 1 contrast, 2 saturation, 3 hue)
    jitter_factors: tuple  # (brightness, contrast, saturation, hue) as drawn (float64)
    gray: bool
    blur_apply: bool
    blur_sigma: float  # 0.0 when blur_apply is False
    solarize: bool

    def as_arrays(self) -> dict:
        """Fixed-shape numpy arrays for batching (keys: PHOTOMETRIC_PARAM_KEYS).

        Brightness / contrast / saturation become float32 (PIL's blend takes a C float, so the host
        result is the same); hue becomes the exact integer shift `hue_shift(h)`, since rounding h to
        float32 first could move h * 255 across an integer.
        """
        b, c, s, h = self.jitter_factors
        return {"jitter_apply": np.bool_(self.jitter_apply),
                "jitter_order": np.asarray(self.jitter_order, np.int32),
                "jitter_factors": np.asarray((b, c, s), np.float32),
                "hue_shift": np.int32(hue_shift(h)),
                "gray": np.bool_(self.gray),
                "blur_apply": np.bool_(self.blur_apply),
                "blur_sigma": np.float32(self.blur_sigma),
                "solarize": np.bool_(self.solarize)}


PHOTOMETRIC_PARAM_KEYS = ("jitter_apply", "jitter_order", "jitter_factors", "hue_shift", "gray", "blur_apply",
                          "blur_sigma", "solarize")

PHOTOMETRIC_CROP_SETS = ("global", "local")


def batch_param_key(crop_set: str, name: str) -> str:
    """Batch key of one collated photometric parameter, e.g. ('global', 'blur_sigma') ->
    'collated_global_blur_sigma' (flat keys: the sharding helpers split every array on its rows)."""
    return f"collated_{crop_set}_{name}"


def sample_color_jitter(rng: np.random.Generator, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1):
    """torchvision ColorJitter draws: op order, then b,c,s ~ U(1-x, 1+x), hue ~ U(-x, x) -> (order, factors)."""
    order = tuple(int(o) for o in rng.permutation(4))
    b = rng.uniform(1 - brightness, 1 + brightness)
    c = rng.uniform(1 - contrast, 1 + contrast)
    s = rng.uniform(1 - saturation, 1 + saturation)
    h = rng.uniform(-hue, hue)
    return order, (b, c, s, h)


def apply_color_jitter(img: Image.Image, order, factors) -> Image.Image:
    """The four ColorJitter ops with the given factors (b, c, s, h), in `order`."""
    ops = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
    for op in order:
        img = ops[op](img, factors[op])
    return img


def color_jitter(img: Image.Image, rng: np.random.Generator, brightness=0.4, contrast=0.4,
                 saturation=0.2, hue=0.1) -> Image.Image:
    """torchvision ColorJitter: factors b,c,s ~ U(1-x, 1+x), hue ~ U(-x, x), ops in random order."""
    return apply_color_jitter(img, *sample_color_jitter(rng, brightness, contrast, saturation, hue))


def sample_photometric(rng: np.random.Generator, blur_prob: float, solarize_prob: float) -> PhotometricParams:
    """All random draws of one crop's photometric chain, in the order the chain makes them:
    jitter? (p=0.8) [order, b, c, s, h], grayscale? (p=0.2), blur? (blur_prob; no draw if 0) [sigma],
    solarize? (solarize_prob; no draw if 0)."""
    jitter = rng.random() < COLOR_JITTER_PROB
    order, factors = sample_color_jitter(rng, **JITTER) if jitter else ((0, 1, 2, 3), (1.0, 1.0, 1.0, 0.0))
    gray = rng.random() < GRAYSCALE_PROB
    blur = bool(blur_prob > 0 and rng.random() < blur_prob)
    sigma = rng.uniform(*BLUR_SIGMA) if blur else 0.0
    sol = bool(solarize_prob > 0 and rng.random() < solarize_prob)
    return PhotometricParams(bool(jitter), order, factors, bool(gray), blur, float(sigma), sol)


def apply_photometric(img: Image.Image, p: PhotometricParams) -> Image.Image:
    """Color jitter -> grayscale -> blur -> solarize, each only if sampled."""
    if p.jitter_apply:
        img = apply_color_jitter(img, p.jitter_order, p.jitter_factors)
    if p.gray:
        img = to_grayscale_rgb(img)
    if p.blur_apply:
        img = gaussian_blur(img, p.blur_sigma)
    if p.solarize:
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
    """Multi-crop augmentation of the official `DataAugmentationDINO` (effective blur probabilities 0 / 0.9 / 0.5).

    `aug(image, rng)` -> {"global_crops": [2, S, S, 3] float32, "local_crops": [n, s, s, 3] float32},
    ImageNet-normalised, channel-last. image: PIL image or uint8 [H, W(, C)].

    photometric_on_device=True: only decode + geometric ops run here; the crops stay uint8 and the
    photometric parameters, drawn from `rng` exactly as the host path draws them, come with them:
    {"global_crops": uint8 [2, S, S, 3], "local_crops": uint8 [n, s, s, 3],
     "global_photometric": {key: [2, ...]}, "local_photometric": {key: [n, ...]}} (keys:
    PHOTOMETRIC_PARAM_KEYS). `dinov2_jax.data.device_augment.photometric_augment` finishes the crops.
    """

    global_crops_scale: tuple = (0.32, 1.0)
    local_crops_scale: tuple = (0.05, 0.32)
    local_crops_number: int = 8
    global_crops_size: int = 224
    local_crops_size: int = 96
    photometric_on_device: bool = False
    # effective probabilities: blur of (global crop 1, global crop 2, local crops), solarize of global crop 2
    blur_probs: tuple = (BLUR_PROB_GLOBAL1, BLUR_PROB_GLOBAL2, BLUR_PROB_LOCAL)
    solarize_prob: float = SOLARIZE_PROB_GLOBAL2

    def __post_init__(self):
        if len(self.blur_probs) != 3 or not all(0 <= p <= 1 for p in (*self.blur_probs, self.solarize_prob)):
            raise ValueError(f"blur_probs must be 3 probabilities (global 1, global 2, local) and solarize_prob one "
                             f"probability, got {self.blur_probs} and {self.solarize_prob}")
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
        """Build from `cfg.crops` (keys as the official config, + `photometric_on_device`, `blur_probs`,
        `solarize_prob`)."""
        return cls(tuple(crops_cfg.global_crops_scale), tuple(crops_cfg.local_crops_scale),
                   int(crops_cfg.local_crops_number), int(crops_cfg.global_crops_size),
                   int(crops_cfg.local_crops_size), bool(crops_cfg.get("photometric_on_device", False)),
                   tuple(float(p) for p in crops_cfg.get("blur_probs", cls.blur_probs)),
                   float(crops_cfg.get("solarize_prob", cls.solarize_prob)))

    def sample_crops(self, image, rng: np.random.Generator):
        """Yields (geometric crop (PIL), PhotometricParams) for global 1, global 2, then the local crops.

        Per crop the geometry is drawn first, then the photometric parameters; both modes consume
        `rng` through this generator only, so they see the same crops and parameters for a seed.
        """
        img = to_pil_rgb(image)
        b1, b2, bl = self.blur_probs
        specs = [(self.global_crops_size, self.global_crops_scale, b1, 0.0),
                 (self.global_crops_size, self.global_crops_scale, b2, self.solarize_prob)]
        specs += [(self.local_crops_size, self.local_crops_scale, bl, 0.0)] * self.local_crops_number
        for size, scale, blur_prob, solarize_prob in specs:
            crop = _geometric(img, rng, size, scale)
            yield crop, sample_photometric(rng, blur_prob, solarize_prob)

    def __call__(self, image, rng: np.random.Generator) -> dict:
        on_device = self.photometric_on_device
        S, s, n = self.global_crops_size, self.local_crops_size, self.local_crops_number
        dtype = np.uint8 if on_device else np.float32
        glob, local = np.empty((2, S, S, 3), dtype), np.empty((n, s, s, 3), dtype)
        params = []
        # each crop is finished right after its draws (the call order the host path always had)
        for i, (crop, p) in enumerate(self.sample_crops(image, rng)):
            dest, j = (glob, i) if i < 2 else (local, i - 2)
            if on_device:
                dest[j] = np.asarray(crop, np.uint8)
                params.append(p.as_arrays())
            else:
                dest[j] = normalize(apply_photometric(crop, p))
        out = {"global_crops": glob, "local_crops": local}
        if on_device:
            out["global_photometric"] = _stack_params(params[:2], params[0])
            out["local_photometric"] = _stack_params(params[2:], params[0])
        return out


def _stack_params(rows: list, like: dict) -> dict:
    """Per-crop param dicts -> {key: [len(rows), ...]} (shape/dtype of `like` when there are no rows)."""
    return {k: np.stack([r[k] for r in rows]) if rows else np.empty((0,) + like[k].shape, like[k].dtype)
            for k in PHOTOMETRIC_PARAM_KEYS}


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
