"""Hub linear classifiers `dinov2_vit{s,b,l,g}14[_reg]_lc` (official `dinov2/hub/classifiers.py`).

  clf = load_classifier("dinov2_vits14_lc", weights="dinov2_vits14_pretrain.pth",
                        head="dinov2_vits14_linear4_head.pth")
  logits = clf(images)  # images [B, H, W, 3] ImageNet-normalised -> [B, 1000]

The backbone comes from `dinov2_jax.hub.load` (same weights formats); the head file is an official
`*_linear_head.pth` (layers=1) or `*_linear4_head.pth` (layers=4); the number of layers is read from the
file's input width. Official URL pattern (download yourself, nothing is fetched here):
https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_reg4_linear4_head.pth
"""
from __future__ import annotations

import logging
import os

import jax
import numpy as np
from flax import nnx

from dinov2_jax import hub
from dinov2_jax.models.heads.linear_classifier import (LinearClassifier, LinearClassifierHead, load_head_file)

logger = logging.getLogger("dinov2_jax.hub_classifiers")

CLASSIFIER_NAMES = tuple(f"{n}_lc" for n in hub.HUB_NAMES)


def head_file_name(name: str, layers: int = 4) -> str:
    """Official head file name, e.g. ("dinov2_vits14_reg_lc", 4) -> "dinov2_vits14_reg4_linear4_head.pth"."""
    if name not in CLASSIFIER_NAMES:
        raise ValueError(f"unknown classifier {name!r}; valid names: {', '.join(CLASSIFIER_NAMES)}")
    if layers not in (1, 4):
        raise ValueError(f"layers={layers}: the official linear heads use 1 or 4 layers")
    base = name[:-len("_lc")].replace("_reg", "_reg4")
    return f"{base}_linear{'4' if layers == 4 else ''}_head.pth"


def load_classifier(name: str, weights: str | None = None, head: str | None = None, *, layers: int | None = None,
                    dtype="float32") -> LinearClassifier:
    """Backbone `name[:-3]` from `weights` (see hub.load) + the official linear head from `head`.

    head None: random head of `layers` (default 4) layers, logged loudly. With a head file, `layers` (if
    given) must match the file."""
    if name not in CLASSIFIER_NAMES:
        raise ValueError(f"unknown classifier {name!r}; valid names: {', '.join(CLASSIFIER_NAMES)}")
    backbone = hub.load(name[:-len("_lc")], weights, dtype=dtype, attn_impl=hub.default_attn_impl(dtype))
    if head is None:
        logger.warning("load_classifier(%r): no head given -> RANDOM linear head (logits are meaningless)", name)
        h = LinearClassifierHead(backbone.embed_dim, layers or 4, rngs=nnx.Rngs(0))
    else:
        h = load_head_file(head, backbone.embed_dim)
        if layers is not None and layers != h.layers:
            raise ValueError(f"head {head!r} is a {h.layers}-layer head, but layers={layers} was asked")
    return LinearClassifier(backbone, h)


def make_classify_fn(classifier: LinearClassifier):
    """Jitted images [B, H, W, 3] -> logits [B, C] (float32)."""
    from dinov2_jax.pretrained import jit_module

    return jit_module(classifier, lambda m, images: m(images).astype("float32"))


def classify_folder(classifier: LinearClassifier, images_dir: str, *, batch_size: int = 32,
                    image_size: int = 224, files=None) -> tuple[list[str], np.ndarray]:
    """Images of a folder (official eval transform) -> (relative paths, logits [N, C]).

    files: relative paths to classify (default: every image under images_dir, sorted)."""
    from dinov2_jax.eval.dense import batched
    from dinov2_jax.data.sources import list_images
    from dinov2_jax.extract import load_image

    files = list(files) if files is not None else list_images(images_dir)
    fn = make_classify_fn(classifier)
    out = []
    for start in range(0, len(files), batch_size):  # images read batch by batch
        batch = np.stack([load_image(os.path.join(images_dir, f), image_size) for f in files[start:start + batch_size]])
        out.append(batched(lambda x: jax.device_get(fn(x)), batch, batch_size))
    return files, np.concatenate(out)


def format_top5(files, logits, class_names=None, k: int = 5) -> str:
    """One line per image: `path: name (p), name (p), ...` (class indices if no names)."""
    from dinov2_jax.models.heads.linear_classifier import top_k

    idx, prob = top_k(logits, k)
    lines = []
    for f, ii, pp in zip(files, idx, prob):
        labels = [f"{class_names[i] if class_names else i} ({p:.3f})" for i, p in zip(ii, pp)]
        lines.append(f"{f}: " + ", ".join(labels))
    return "\n".join(lines)


def classify_with_head_file(backbone, head_path: str, images_dir: str, files, *, batch_size: int = 32,
                            image_size: int = 224) -> np.ndarray:
    """Extract-CLI helper: backbone + head file over `files` (the images the extraction kept); prints the
    top-5 classes; -> logits [N, C]. Runs the backbone a second time (the classifier input needs the last 4 blocks)."""
    from dinov2_jax.models.heads.linear_classifier import NUM_IMAGENET_CLASSES, imagenet_class_names

    clf = LinearClassifier(backbone, load_head_file(head_path, backbone.embed_dim))
    got, logits = classify_folder(clf, images_dir, batch_size=batch_size, image_size=image_size, files=files)
    names = imagenet_class_names() if logits.shape[1] == NUM_IMAGENET_CLASSES else None
    print(format_top5(got, logits, names))
    return logits
