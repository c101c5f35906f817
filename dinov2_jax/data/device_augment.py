"""Photometric half of the DINOv2 augmentation on the accelerator (opt-in: `crops.photometric_on_device`).

The host (`DataAugmentationDINO(photometric_on_device=True)`) decodes, crops, flips and draws every
random parameter; this module applies color jitter (per-sample op order), grayscale, Gaussian blur,
solarize and the ImageNet normalisation to a batch of uint8 crops with pure, jittable functions.

Every op reproduces the host op (PIL / our numpy blur) on uint8 levels, including PIL's own float32
vs float64 steps and its truncations, so the result is the host crop:
  * brightness / contrast / saturation / grayscale / solarize: identical (PIL blend = float32
    `deg + f * (img - deg)` truncated; luma = PIL's integer ITU-R 601-2 formula);
  * hue: PIL's RGB->HSV and HSV->RGB emulated exactly: identical on all 2^24 inputs of each
    conversion (XLA:CPU, tests/data/test_device_augment.py);
  * blur: same float32 kernel and reflect padding, float32 sums in another order than scipy's float64
    ones: at most 1 level off, on rare pixels (none on the per-op test images);
  * whole chain with the host's parameters: max |device - host| 1 uint8 level (1 / 255 / std <= 0.0175
    after normalisation) on 4.6e-6 of the values (24 demo images x 10 crops at 224 / 96 px), from the
    blur's rounding.
Measured on XLA:CPU; on GPU/TPU the float32 ops are IEEE too, but GPU timings and parity are not
yet measured (docs/benchmarks.md).

Params (from the batch, one row per crop, see `augmentations.PhotometricParams.as_arrays`):
  jitter_apply bool [B], jitter_order int32 [B, 4] (0 brightness, 1 contrast, 2 saturation, 3 hue),
  jitter_factors float32 [B, 3] (brightness, contrast, saturation), hue_shift int32 [B] (0..255),
  gray bool [B], blur_apply bool [B], blur_sigma float32 [B], solarize bool [B].
Images between ops are float32 [B, H, W, 3] holding integer levels 0..255 (the host's uint8 images).
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from dinov2_jax.data.augmentations import (BLUR_KERNEL_SIZE, IMAGENET_MEAN, IMAGENET_STD, PHOTOMETRIC_CROP_SETS,
                                           PHOTOMETRIC_PARAM_KEYS, batch_param_key)

# ----------------------------------------------------------------------------- exact float32 helpers
# XLA may compute x / y up to 1 ulp off the IEEE quotient (seen on XLA:CPU for vectorised loops, and a
# division by a constant may become x * (1/y)); PIL's hue conversion truncates quotients to integers,
# so 1 ulp can change a level.
# These helpers recover the correctly rounded / exactly truncated values with exact float32 checks.


def _split(x):
    """x = hi + lo exactly, hi with the top 12 mantissa bits (so small-int * hi / lo are exact)."""
    hi = jax.lax.bitcast_convert_type(jax.lax.bitcast_convert_type(x, jnp.uint32) & jnp.uint32(0xFFFFF000),
                                      jnp.float32)
    return hi, x - hi


def _next_up(x):
    return jax.lax.bitcast_convert_type(jax.lax.bitcast_convert_type(x, jnp.int32) + 1, jnp.float32)


def _next_down(x):
    return jax.lax.bitcast_convert_type(jax.lax.bitcast_convert_type(x, jnp.int32) - 1, jnp.float32)


def _div_rn(a, b):
    """IEEE float32 a / b (round to nearest) for a >= 0 and b > 0 an integer <= 255.

    The quotient q from XLA is within 1 ulp; q is moved to a neighbour when `a` lies beyond the
    midpoint q +- ulp/2, tested exactly: b * (midpoint) is split into two exact products and
    a - b*hi is exact (Sterbenz) wherever the sign matters. Ties cannot occur for these operands.
    """
    q = a / b
    pos = q > 0
    qs = jnp.where(pos, q, 1.0)
    hi, lo = _split(qs)
    up, down = _next_up(qs), _next_down(qs)
    above = ((a - b * hi) - b * (lo + 0.5 * (up - qs))) > 0
    below = ((a - b * hi) - b * (lo - 0.5 * (qs - down))) < 0
    q2 = jnp.where(above, up, jnp.where(below, down, qs))
    return jnp.where(pos, q2, q)


def _floor_times(x, m: float):
    """floor(x * m) exactly for float32 x >= 0 and an integer m <= 255 (C's (int)(x * 255.0))."""
    k = jnp.floor(x * m)
    hi, lo = _split(x)
    k = jnp.where(((hi * m - k) + lo * m) < 0, k - 1, k)
    return jnp.where(((hi * m - (k + 1)) + lo * m) >= 0, k + 1, k)


def _round_const_plus_diff(K, x, y):
    """float32(K + x - y) rounded once (C: `float h = 2.0 + rc - bc`, evaluated in double), K in {2, 4},
    x, y in [0, 1]: exact TwoSum of x - y, then the float32 sum is moved by one ulp if the exact
    remainder passes half an ulp (ties to even)."""
    s = x - y
    z = s - x
    e = (x - (s - z)) + (-y - z)  # x - y == s + e exactly
    c = K + s
    t = s - (c - K)  # K + s == c + t exactly (|K| >= |s|)
    ulp = _next_up(c) - c
    half = 0.5 * ulp
    odd = (jax.lax.bitcast_convert_type(c, jnp.int32) & 1) == 1
    above = (t - half) + e
    below = (t + half) + e
    c = jnp.where((above > 0) | ((above == 0) & odd), c + ulp, c)
    return jnp.where((below < 0) | ((below == 0) & odd), c - ulp, c)


# ----------------------------------------------------------------------------- colour conversions


def luma(x):
    """PIL "L": (19595 R + 38470 G + 7471 B + 2^15) >> 16. [..., H, W, 3] levels -> [..., H, W] float32."""
    xi = x.astype(jnp.int32)
    l = (xi[..., 0] * 19595 + xi[..., 1] * 38470 + xi[..., 2] * 7471 + 32768) >> 16
    return l.astype(jnp.float32)


def rgb_to_hsv(x):
    """PIL RGB -> HSV (Convert.c rgb2hsv_row, its float/double steps reproduced). [..., 3] levels -> same."""
    xi = x.astype(jnp.int32)
    r, g, b = xi[..., 0], xi[..., 1], xi[..., 2]
    mx = jnp.maximum(jnp.maximum(r, g), b)
    gray = mx == jnp.minimum(jnp.minimum(r, g), b)
    cr = jnp.where(gray, 1.0, (mx - jnp.minimum(jnp.minimum(r, g), b)).astype(jnp.float32))
    s = _div_rn(cr, jnp.where(mx == 0, 1.0, mx.astype(jnp.float32)))
    rc, gc, bc = (_div_rn((mx - c).astype(jnp.float32), cr) for c in (r, g, b))
    g_max = g == mx
    h = jnp.where(r == mx, bc - gc,
                  _round_const_plus_diff(jnp.where(g_max, 2.0, 4.0).astype(jnp.float32),
                                         jnp.where(g_max, rc, gc), jnp.where(g_max, bc, rc)))
    # float h = fmod(h / 6.0 + 1.0, 1.0) in double, stored as float: equals float32(h / 6) for h >= 0 and
    # 1 - float32(-h / 6) for h < 0 on every input (the exhaustive test), given an exact division.
    q = _div_rn(jnp.abs(h), jnp.full_like(h, 6.0))
    frac = jnp.where(h < 0, 1.0 - q, q)
    uh = jnp.where(gray, 0.0, _floor_times(frac, 255.0))
    us = jnp.where(gray, 0.0, _floor_times(s, 255.0))
    return jnp.stack([uh, us, mx.astype(jnp.float32)], axis=-1)


def hsv_to_rgb(hsv):
    """PIL HSV -> RGB (Convert.c hsv2rgb). [..., 3] levels -> same."""
    hi = hsv.astype(jnp.int32)
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    i = (hi[..., 0] * 6) // 255
    c255 = jnp.full_like(h, 255.0)
    f = _div_rn(h * 6.0 - i.astype(jnp.float32) * 255.0, c255)
    fs = _div_rn(s, c255)
    # round(): half away from zero in C; exact halves cannot occur here (checked on all inputs)
    p = jnp.round(v * (1.0 - fs))
    q = jnp.round(v * (1.0 - fs * f))
    t = jnp.round(v * (1.0 - fs * (1.0 - f)))
    sector = i % 6
    cases = [sector == k for k in range(5)]
    r = jnp.select(cases, [v, q, p, p, t], v)
    g = jnp.select(cases, [t, v, v, q, p], p)
    b = jnp.select(cases, [p, p, t, v, v], q)
    rgb = jnp.stack([r, g, b], axis=-1)
    return jnp.where((hi[..., 1] == 0)[..., None], v[..., None], rgb)


# ----------------------------------------------------------------------------- photometric ops
# x: float32 [B, H, W, 3] levels; per-sample factors [B].


def _per_sample(f, x):
    return jnp.asarray(f, jnp.float32).reshape(f.shape + (1,) * (x.ndim - f.ndim))


def _blend(degenerate, x, factor):
    """PIL Image.blend(degenerate, x, factor): float32 deg + f * (x - deg), truncated, clipped."""
    d = x - degenerate
    f_hi, f_lo = _split(_per_sample(factor, x))
    # == float32(f * d) even where XLA contracts mul + add into an FMA (it does under fusion): both
    # partial products are exact, so the sum is rounded once, as PIL's float product is.
    prod = f_hi * d + f_lo * d
    return jnp.clip(jnp.floor(degenerate + prod), 0.0, 255.0)


def adjust_brightness(x, factor):
    return _blend(jnp.zeros_like(x), x, factor)


def _mean_luma(lum):
    """int(mean + 0.5) of luma [B, H, W] (PIL ImageEnhance.Contrast's grey level) -> float32 [B]."""
    h, w = lum.shape[-2], lum.shape[-1]
    if 2 * 255 * h * w + h * w >= 2 ** 31:
        raise ValueError(f"adjust_contrast: a {h}x{w} crop overflows the int32 luma sum; use crops "
                         "smaller than ~2900x2900")
    total = jnp.sum(lum.astype(jnp.int32), axis=(-2, -1))
    n = h * w
    return ((2 * total + n) // (2 * n)).astype(jnp.float32)  # int(total / n + 0.5), exactly


def adjust_contrast(x, factor):
    """Blend with the image's mean luma, int(mean + 0.5) (PIL ImageEnhance.Contrast)."""
    return _blend(_mean_luma(luma(x))[..., None, None, None], x, factor)


def adjust_saturation(x, factor):
    return _blend(jnp.repeat(luma(x)[..., None], 3, axis=-1), x, factor)


def adjust_hue(x, shift):
    """Add `shift` (int, [B]) mod 256 to the PIL HSV hue channel (host: augmentations.adjust_hue)."""
    hsv = rgb_to_hsv(x)
    hue = jnp.mod(hsv[..., 0].astype(jnp.int32) + _per_sample(shift, hsv[..., 0]).astype(jnp.int32), 256)
    return hsv_to_rgb(hsv.at[..., 0].set(hue.astype(jnp.float32)))


def to_grayscale(x):
    return jnp.repeat(luma(x)[..., None], 3, axis=-1)


def solarize(x, threshold: float = 128.0):
    return jnp.where(x >= threshold, 255.0 - x, x)


def gaussian_kernel1d(sigma, kernel_size: int = BLUR_KERNEL_SIZE):
    """Normalised float32 Gaussian taps [B, kernel_size] on integer offsets, per-sample sigma [B]."""
    half = (kernel_size - 1) * 0.5
    offsets = jnp.linspace(-half, half, kernel_size, dtype=jnp.float32)
    pdf = jnp.exp(-0.5 * (offsets / sigma[:, None]) ** 2)
    return pdf / jnp.sum(pdf, axis=-1, keepdims=True)


def gaussian_blur(x, sigma, kernel_size: int = BLUR_KERNEL_SIZE):
    """Separable blur, reflect padding (edge pixel not repeated), rounded half-to-even.

    x [B, H, W, 3], sigma [B]. H and W must exceed kernel_size // 2 (reflect padding)."""
    r = kernel_size // 2
    if x.shape[1] <= r or x.shape[2] <= r:
        raise ValueError(f"gaussian_blur needs crops larger than {r} pixels per side, got {x.shape[1:3]}")
    k = gaussian_kernel1d(sigma, kernel_size)
    for axis in (1, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (r, r)
        xp = jnp.pad(x, pad, mode="reflect")
        n = x.shape[axis]
        out = 0.0
        for j in range(kernel_size):
            tap = k[:, j].reshape(-1, 1, 1, 1)
            out = out + tap * jax.lax.slice_in_dim(xp, j, j + n, axis=axis)
        x = out
    return jnp.clip(jnp.round(x), 0.0, 255.0)


def normalize(x):
    """Levels [..., 3] -> ImageNet-normalised float32 (host: augmentations.normalize)."""
    return (x / jnp.float32(255.0) - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


# ----------------------------------------------------------------------------- composed


def color_jitter(x, order, factors, hue_shift):
    """The four jitter ops in each sample's own order. order int32 [B, 4], factors [B, 3], hue_shift [B].

    Brightness, contrast and saturation are all PIL blends (with black, the mean grey, the luma image),
    so each step is one blend with the sample's own degenerate image and factor. Hue, the costly op,
    runs once: the blends of the steps before each sample's hue position, then hue, then the rest."""
    hue_pos = jnp.argmax(order == 3, axis=1)
    rows = jnp.arange(order.shape[0])

    def blend_step(x, step):
        op = order[:, step]
        lum = luma(x)
        degenerate = jnp.where((op == 0)[:, None, None, None], 0.0,
                               jnp.where((op == 1)[:, None, None, None], _mean_luma(lum)[:, None, None, None],
                                         lum[..., None]))
        return _blend(degenerate, x, factors[rows, jnp.minimum(op, 2)])

    for step in range(3):  # hue is at position >= step + 1 for these samples
        x = jnp.where((step < hue_pos)[:, None, None, None], blend_step(x, step), x)
    x = adjust_hue(x, hue_shift)
    for step in range(1, 4):
        x = jnp.where((step > hue_pos)[:, None, None, None], blend_step(x, step), x)
    return x


def _check_params(crops, params: Mapping[str, jax.Array]):
    missing = [k for k in PHOTOMETRIC_PARAM_KEYS if k not in params]
    if missing:
        raise KeyError(f"photometric params missing {missing}; build them with "
                       "DataAugmentationDINO(photometric_on_device=True)")
    if crops.ndim != 4 or crops.shape[-1] != 3:
        raise ValueError(f"crops must be [B, H, W, 3], got {crops.shape}")
    if crops.dtype != jnp.uint8:
        raise TypeError(f"crops must be uint8 (the host's un-normalised crops), got {crops.dtype}; was the "
                        "loader built with crops.photometric_on_device=True?")
    b = crops.shape[0]
    for k in PHOTOMETRIC_PARAM_KEYS:
        if params[k].shape[:1] != (b,):
            raise ValueError(f"photometric param {k!r} has shape {params[k].shape}; expected {b} rows (one per crop)")


def photometric_augment(crops, params: Mapping[str, jax.Array]):
    """uint8 crops [B, H, W, 3] + per-crop params (module docstring) -> normalised float32 [B, H, W, 3].

    jitter (if jitter_apply) -> grayscale (if gray) -> blur (if blur_apply) -> solarize (if solarize)."""
    _check_params(crops, params)
    x = crops.astype(jnp.float32)

    def flag(k):
        return params[k].reshape(-1, 1, 1, 1)

    x = jnp.where(flag("jitter_apply"),
                  color_jitter(x, params["jitter_order"], params["jitter_factors"], params["hue_shift"]), x)
    x = jnp.where(flag("gray"), to_grayscale(x), x)
    # sigma of unblurred crops is 0 (host convention); any positive value keeps the unused branch finite
    sigma = jnp.where(params["blur_apply"], params["blur_sigma"], 1.0)
    x = jnp.where(flag("blur_apply"), gaussian_blur(x, sigma), x)
    x = jnp.where(flag("solarize"), solarize(x), x)
    return normalize(x)


def augment_batch(batch: Mapping[str, jax.Array]) -> dict:
    """Loader batch of the photometric_on_device mode -> the train step's batch.

    collated_{global,local}_crops uint8 + collated_{global,local}_<param> -> float32 normalised crops;
    the param keys are dropped, every other key passes through. Per-sample, so under jit it keeps the
    batch sharding of the crops."""
    out = {k: v for k, v in batch.items() if not is_param_key(k)}
    for c in PHOTOMETRIC_CROP_SETS:
        crops = batch[f"collated_{c}_crops"]
        params = {p: batch[batch_param_key(c, p)] for p in PHOTOMETRIC_PARAM_KEYS
                  if batch_param_key(c, p) in batch}
        if crops.shape[0] == 0:  # no local crops configured
            out[f"collated_{c}_crops"] = crops.astype(jnp.float32)
            continue
        out[f"collated_{c}_crops"] = photometric_augment(crops, params)
    return out


def is_param_key(key: str) -> bool:
    """Is `key` one of the collated photometric parameter keys (`batch_param_key`)?"""
    return any(key == batch_param_key(c, p) for c in PHOTOMETRIC_CROP_SETS for p in PHOTOMETRIC_PARAM_KEYS)
