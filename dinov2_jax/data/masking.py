"""iBOT block masking (official `dinov2/data/masking.py`) and the multi-crop collate with fixed-size mask
buffers (official `collate_data_and_cast`, `dinov2/data/collate.py`).

Randomness comes from an explicit `random.Random` instance (the official code draws from Python's
global `random` module; with the same seed our draws are identical, see
tests/data/test_masking.py's golden comparison). Mask-ratio arithmetic is float32 like the official
torch code (`torch.linspace` + tensor math) so `int(N * ratio)` truncates identically.
"""
from __future__ import annotations

import math
import random
from typing import Sequence

import numpy as np

from dinov2_jax.data.augmentations import PHOTOMETRIC_CROP_SETS, PHOTOMETRIC_PARAM_KEYS, batch_param_key


class MaskingGenerator:
    """BEiT block-wise mask generator on an (h, w) patch grid.

    `gen(num_masking_patches, rng)` -> bool [h, w] with at most `num_masking_patches` True cells,
    built from rectangles of >= `min_num_patches` cells and aspect in [min_aspect, max_aspect].
    """

    def __init__(self, input_size, num_masking_patches=None, min_num_patches: int = 4,
                 max_num_patches=None, min_aspect: float = 0.3, max_aspect=None):
        self.height, self.width = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        self.num_patches = self.height * self.width
        self.min_num_patches = min_num_patches
        self.max_num_patches = num_masking_patches if max_num_patches is None else max_num_patches
        max_aspect = max_aspect or 1 / min_aspect
        self.log_aspect_ratio = (math.log(min_aspect), math.log(max_aspect))

    def _add_block(self, mask: np.ndarray, max_mask_patches, rng: random.Random) -> int:
        """Try (10 times) to mask one new rectangle adding 1..max_mask_patches cells; returns #added."""
        for _ in range(10):
            area = rng.uniform(self.min_num_patches, max_mask_patches)
            aspect = math.exp(rng.uniform(*self.log_aspect_ratio))
            hh = int(round(math.sqrt(area * aspect)))
            ww = int(round(math.sqrt(area / aspect)))
            if ww < self.width and hh < self.height:  # strict, as the official generator
                top = rng.randint(0, self.height - hh)
                left = rng.randint(0, self.width - ww)
                region = mask[top:top + hh, left:left + ww]
                new = hh * ww - int(region.sum())
                if 0 < new <= max_mask_patches:
                    region[...] = True
                    return new
        return 0

    def __call__(self, num_masking_patches: int = 0, rng: random.Random | None = None) -> np.ndarray:
        if rng is None:
            raise ValueError("pass rng=random.Random(seed): masking randomness must be explicit")
        mask = np.zeros((self.height, self.width), dtype=bool)
        count = 0
        while count < num_masking_patches:
            max_mask = min(num_masking_patches - count, self.max_num_patches)
            delta = self._add_block(mask, max_mask, rng)
            if delta == 0:
                break
            count += delta
        return mask


def _torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """float32 `torch.linspace` as torch's CPU kernel computes it, bit for bit.

    step = (end - start) / (steps - 1) in float32; element i = start + step*i for the first half and
    end - step*(steps-1-i) for the second, each a fused multiply-add (one rounding; the compiled
    kernel contracts it). Checked against torch for steps 2..600 in tests/data/test_masking.py.
    """
    start32, end32 = np.float32(start), np.float32(end)
    if steps == 1:
        return np.array([start32], np.float32)
    step = float(np.float32((end32 - start32) / np.float32(steps - 1)))
    half = steps // 2
    # float64 holds step*i exactly (24-bit mantissa x small int), so one float32 rounding = fma.
    vals = [float(start32) + step * i if i < half else float(end32) - step * (steps - 1 - i) for i in range(steps)]
    return np.asarray(vals, np.float64).astype(np.float32)


def _n_masked_images(n_global: int, mask_probability: float) -> int:
    return int(n_global * mask_probability)


def mask_upperbound(batch_size: int, n_tokens: int, mask_ratio_tuple: Sequence[float] = (0.1, 0.5),
                    mask_probability: float = 0.5, n_global_crops: int = 2) -> int:
    """Static size of the masked-token buffers: sum_i int(N * probs[i+1]) over the masked crops.

    batch_size: images per process (B); the official collate masks int(2B * p) of the 2B global crops.
    It is >= the number of masked tokens of any batch (each crop gets <= int(N * probs[i+1])).
    """
    n_masked = _n_masked_images(n_global_crops * batch_size, mask_probability)
    probs = _torch_linspace_f32(mask_ratio_tuple[0], mask_ratio_tuple[1], n_masked + 1)
    return int(sum(int(np.float32(n_tokens) * probs[i + 1]) for i in range(n_masked)))


def sample_masks(n_global: int, n_tokens: int, mask_generator: MaskingGenerator, rng: random.Random,
                 mask_ratio_tuple=(0.1, 0.5), mask_probability: float = 0.5) -> np.ndarray:
    """Masks of all global crops -> bool [n_global, N]: int(n_global * p) crops get stratified ratios
    U(probs[i], probs[i+1]) with probs = linspace(min, max, n+1), the rest nothing; order shuffled."""
    n_masked = _n_masked_images(n_global, mask_probability)
    probs = _torch_linspace_f32(mask_ratio_tuple[0], mask_ratio_tuple[1], n_masked + 1)
    masks = []
    for i in range(n_masked):
        lo, hi = probs[i], probs[i + 1]
        # random.uniform(a, b) = a + (b - a) * random(), evaluated in float32 as on torch scalars.
        ratio = lo + (hi - lo) * np.float32(rng.random())
        masks.append(mask_generator(int(np.float32(n_tokens) * ratio), rng))
    for _ in range(n_masked, n_global):
        masks.append(mask_generator(0, rng))
    rng.shuffle(masks)
    return np.stack(masks).reshape(n_global, -1)


def collate(samples: Sequence[dict], *, mask_generator: MaskingGenerator, rng: random.Random,
            mask_ratio_tuple=(0.1, 0.5), mask_probability: float = 0.5, upperbound: int | None = None,
            groups: int = 1) -> dict:
    """Stack B augmented samples and sample iBOT masks -> batch dict (docs/design.md, Batch).

    The B samples form `groups` per-device batches of b = B / groups consecutive samples, each collated
    as the official collate does on one GPU: crops stacked crop-major within the group, masks sampled
    over the group's 2b global crops, masked-token lists per group. Groups follow each other
    (group-major), so a mesh that splits the leading dim over devices gives each device whole groups.
    samples: dicts {"global_crops" [2, S, S, 3], "local_crops" [nL, s, s, 3]} (+ "global_photometric",
    "local_photometric" param dicts in the photometric_on_device mode, collated under batch_param_key).
    Returns collated_global_crops [G*2b, S, S, 3] (row g*2b + c*b + i), collated_local_crops
    [G*nL*b, s, s, 3] (float32; uint8 stays uint8), collated_masks [G*2b, N] bool,
    mask_indices_list [G, U] int32 (indices into the group's flattened [2b*N] masks; valid prefix
    ascending, 0-padded), masks_weight [G, U] float32 (1/#masked of the token's crop, 0-padded),
    n_masked_patches [G] int32. U = `upperbound`, default mask_upperbound(b, N, ...).
    """
    if not samples:
        raise ValueError("collate needs at least one sample")
    if groups < 1 or len(samples) % groups:
        raise ValueError(f"collate: {len(samples)} samples do not split into {groups} equal groups "
                         "(per-device batches)")
    b = len(samples) // groups
    n_tokens = mask_generator.num_patches
    chunks = [samples[g * b:(g + 1) * b] for g in range(groups)]
    glob = np.concatenate([_crop_major([s["global_crops"] for s in c]) for c in chunks])
    loc = np.concatenate([_crop_major([s["local_crops"] for s in c]) for c in chunks])
    n_global = glob.shape[0] // groups
    if upperbound is None:
        upperbound = mask_upperbound(b, n_tokens, mask_ratio_tuple, mask_probability, n_global // b)
    masks, indices, weights, counts = [], [], [], []
    for _ in range(groups):
        m = sample_masks(n_global, n_tokens, mask_generator, rng, mask_ratio_tuple, mask_probability)
        flat = np.flatnonzero(m)
        n = flat.size
        if n > upperbound:
            raise RuntimeError(f"{n} masked tokens exceed the buffer size {upperbound}; upperbound must come "
                               "from mask_upperbound() with the same per-group batch size, N and mask ratios")
        per_crop = np.float32(1.0) / np.maximum(m.sum(-1).astype(np.float32), np.float32(1.0))
        idx = np.zeros(upperbound, np.int32)
        idx[:n] = flat
        w = np.zeros(upperbound, np.float32)
        w[:n] = per_crop[flat // n_tokens]
        masks.append(m)
        indices.append(idx)
        weights.append(w)
        counts.append(n)
    # uint8 crops (photometric_on_device) stay uint8: the accelerator finishes them
    as_crops = (lambda a: a) if glob.dtype == np.uint8 else (lambda a: a.astype(np.float32, copy=False))
    photometric = [_collate_photometric(c) for c in chunks]
    return {
        "collated_global_crops": as_crops(glob),
        "collated_local_crops": as_crops(loc),
        "collated_masks": np.concatenate(masks),
        "mask_indices_list": np.stack(indices),
        "masks_weight": np.stack(weights),
        "n_masked_patches": np.asarray(counts, np.int32),
        **{k: np.concatenate([p[k] for p in photometric]) for k in photometric[0]},
    }


def _crop_major(per_image: Sequence[np.ndarray]) -> np.ndarray:
    """B arrays [n_crops, ...] -> [n_crops * B, ...] with row c*B + b = crop c of image b."""
    x = np.stack(per_image, axis=1)
    return x.reshape((-1,) + x.shape[2:])


def _collate_photometric(samples: Sequence[dict]) -> dict:
    """photometric_on_device samples: per-crop params stacked crop-major like their crops, under
    `batch_param_key(crop_set, name)`; {} for host-augmented samples."""
    if "global_photometric" not in samples[0]:
        return {}
    out = {}
    for crop_set in PHOTOMETRIC_CROP_SETS:
        for name in PHOTOMETRIC_PARAM_KEYS:
            out[batch_param_key(crop_set, name)] = _crop_major([s[f"{crop_set}_photometric"][name] for s in samples])
    return out
