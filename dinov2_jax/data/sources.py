"""Random-access image sources: `source[i] -> (image, label)` or None for an unreadable image.

Spec strings (`make_source`):
- `folder:PATH`  ImageNet-train layout (`PATH/<class>/**/<img>`, labels = index of the sorted class
  directory names, as torchvision ImageFolder) or a flat folder of images: labelled by a `labels.txt`
  in it (`<image> <class>` lines) or a `LOC_val_solution.csv` in it or up to 4 folders above (the
  ImageNet val layout), else unlabelled (label -1).
- `ImageNet:split=TRAIN|VAL:root=R[:extra=E]`  the official dataset string: the folder `R/train` or `R/val`.
  Extensions .jpg .jpeg .png .webp, any case.
- `tfds:NAME:SPLIT[:DATA_DIR]`  a TFDS dataset prepared with `file_format="array_record"`, read with
  `tfds.data_source` (no TensorFlow needed). Image bytes are decoded here with PIL.
- `shards:DIR`  ArrayRecord shards written by `python -m dinov2_jax.data.pack SOURCE DIR`, and
  `list:FILE`  one `PATH[<TAB>LABEL]` per line, read lazily (both in dinov2_jax/data/shards.py: for
  datasets too large to list at start-up, see docs/data.md).
- `demo` / `demo:train` / `demo:val`  built-in labelled dataset from scikit-image's bundled sample
  photos (no download): each class is one photo, each sample a seeded random crop + flip of it.

Images come back as PIL RGB (folder, tfds) or uint8 [H, W, 3] (demo). A file that cannot be decoded
gives None plus a warning with the running count of skipped images of that source (per process);
the pipelines drop (train) or mark invalid (eval) such samples, so one bad file never stops a run.
"""
from __future__ import annotations

import io
import logging
import os
from typing import Any

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

# Matched in any letter case; every one decodes with PIL.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")


class SkippedCounter:
    """Counts unreadable samples of one source (per process). Warns with the running count the first
    time each file fails (later epochs hitting the same file only count, to keep logs readable)."""

    def __init__(self, what: str):
        self.what = what
        self.count = 0
        self._warned = set()

    def skip(self, ref: Any, err: BaseException) -> None:
        self.count += 1
        if ref in self._warned:
            return
        self._warned.add(ref)
        logger.warning("skipping unreadable image %s in %s (%s: %s); %d skipped so far in this process",
                       ref, self.what, type(err).__name__, err, self.count)


# PIL modes of 16-bit (and 32-bit integer) grayscale images, e.g. 16-bit PNGs
_WIDE_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def decode_image(data) -> Image.Image:
    """bytes / file path / file object -> PIL RGB image (fully decoded, so truncation raises here).
    16-bit grayscale is scaled to 8 bits (value / 257, rounded: 65535 -> 255); PIL's own conversion
    clips it at 255, which makes such images almost white."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = io.BytesIO(bytes(data))
    with Image.open(data) as img:
        img.load()
        if img.mode in _WIDE_GRAY_MODES:
            wide = np.asarray(img).astype(np.float64)
            gray = np.clip(np.round(wide / 257.0), 0, 255).astype(np.uint8)
            return Image.fromarray(gray, "L").convert("RGB")
        return img.convert("RGB")


def to_pil_rgb(image) -> Image.Image:
    """PIL image (any mode) or array [H, W] / [H, W, 1|3|4] (uint8, or bool masks as 0 / 255) -> PIL RGB."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    arr = np.asarray(image)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8:
        raise TypeError(f"expected a PIL image or a uint8 array, got an array of dtype {arr.dtype}; "
                        "convert with np.clip(x, 0, 255).astype(np.uint8) first")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        return Image.fromarray(arr, "L").convert("RGB")
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        return Image.fromarray(np.ascontiguousarray(arr[..., :3]), "RGB")
    raise ValueError(f"expected an image array [H, W] or [H, W, 1|3|4], got shape {arr.shape}")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _walk_images(root: str, visited: set[str] | None = None) -> list[str]:
    """Image files under `root`, following symlinked directories but entering each real directory once:
    a symlink back to an ancestor (a loop) or to a directory already walked (e.g. another class folder,
    listed in `visited`) is skipped with a warning, so every file is listed once."""
    visited = set() if visited is None else visited
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        visited.add(os.path.realpath(dirpath))
        keep = []
        for d in sorted(dirnames):
            real = os.path.realpath(os.path.join(dirpath, d))
            if real in visited:
                logger.warning("%s: skipping %s, a link to %s which is already listed (symlink loop?)",
                               root, os.path.join(dirpath, d), real)
                continue
            visited.add(real)
            keep.append(d)
        dirnames[:] = keep
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames) if _is_image(f))
    return out


def list_images(root: str) -> list[str]:
    """Image files under `root` (recursive, symlinked folders entered once), as sorted paths relative to root."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder {root!r} does not exist or is not a directory")
    out = sorted(os.path.relpath(p, root) for p in _walk_images(root))
    if not out:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}, any case) under {root!r}")
    return out


class FolderSource:
    """Images under a folder: class subfolders (labels from sorted names) or a flat folder (label -1)."""

    def __init__(self, root: str):
        if not root:
            raise ValueError("empty folder path: use folder:/path/to/images")
        if not os.path.isdir(root):
            raise FileNotFoundError(f"dataset folder {root!r} does not exist or is not a directory")
        self.root = root
        subdirs = sorted(e.name for e in os.scandir(root) if e.is_dir())
        classes, files, labels = [], [], []
        # the root and every class folder count as walked from the start: a link inside a class back to
        # the root or into another class must not list those images again (under the wrong label)
        visited = {os.path.realpath(root)} | {os.path.realpath(os.path.join(root, d)) for d in subdirs}
        class_reals = set()
        for d in subdirs:
            real = os.path.realpath(os.path.join(root, d))
            if real in class_reals:
                logger.warning("%s: class folder %s is a link to a class folder already listed; skipped", root, d)
                continue
            class_reals.add(real)
            visited.discard(real)  # lets the walk enter this class folder itself
            imgs = _walk_images(os.path.join(root, d), visited)
            if imgs:
                files.extend(imgs)
                labels.extend([len(classes)] * len(imgs))
                classes.append(d)
        top = sorted(e.path for e in os.scandir(root) if e.is_file() and _is_image(e.name))
        if classes:
            if top:
                logger.warning("%s: %d images directly in the root are ignored (class-folder layout found)",
                               root, len(top))
        else:
            files, classes, labels = top, *flat_folder_labels(root, top)
        if not files:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}, any case) found under {root!r}; "
                             "expected PATH/<class>/<image> or PATH/<image>")
        self.classes = classes
        self.files = files
        self.labels = np.asarray(labels, np.int64)
        self.skipped = SkippedCounter(f"folder:{root}")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        path = self.files[i]
        try:
            img = decode_image(path)
        except Exception as e:  # any decode failure (truncated, garbage, unsupported) -> skip
            self.skipped.skip(path, e)
            return None
        return img, int(self.labels[i])


LABEL_FILES = ("labels.txt", "LOC_val_solution.csv")


def find_label_file(root: str) -> str | None:
    """Label file of a flat image folder: `labels.txt` in it, or `LOC_val_solution.csv` in it or up to 4
    folders above (the Kaggle ImageNet layout keeps it at the top, the images in ILSVRC/Data/CLS-LOC/val)."""
    if os.path.isfile(os.path.join(root, LABEL_FILES[0])):
        return os.path.join(root, LABEL_FILES[0])
    d = os.path.abspath(root)
    for _ in range(5):
        if os.path.isfile(os.path.join(d, LABEL_FILES[1])):
            return os.path.join(d, LABEL_FILES[1])
        d = os.path.dirname(d)
    return None


def read_label_file(path: str) -> dict[str, str]:
    """{image name without extension: class name}. `labels.txt`: one `<image file> <class>` per line
    (comma or whitespace separated); `LOC_val_solution.csv`: `ImageId,PredictionString` with the class
    as the first word of PredictionString (e.g. `ILSVRC2012_val_00000001,n01751748 ...`)."""
    out = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or (n == 1 and line.lower().startswith("imageid")):
                continue
            parts = line.replace(",", " ").split()
            if len(parts) < 2:
                raise ValueError(f"{path}: line {n} {line!r} is not '<image> <class>'")
            out[os.path.splitext(os.path.basename(parts[0]))[0]] = parts[1]
    return out


def flat_folder_labels(root: str, files: list[str]):
    """(classes, labels) of a flat image folder: from its label file (see `find_label_file`; classes are
    the sorted class names, so they match a train folder's class sub-folders by name) or ([], all -1)."""
    path = find_label_file(root)
    if path is None:
        return [], [-1] * len(files)
    names = read_label_file(path)
    keys = [os.path.splitext(os.path.basename(f))[0] for f in files]
    missing = [k for k in keys if k not in names]
    if missing:
        raise ValueError(f"{root}: {len(missing)} of {len(keys)} images have no label in {path} "
                         f"(e.g. {missing[0]!r}); fix the label file or remove those images")
    classes = sorted({names[k] for k in keys})
    index = {c: i for i, c in enumerate(classes)}
    logger.info("%s: flat folder labelled by %s (%d images, %d classes)", root, path, len(files), len(classes))
    return classes, [index[names[k]] for k in keys]


IMAGENET_SPLITS = {"TRAIN": "train", "VAL": "val"}


def parse_official_dataset(spec: str) -> str:
    """Official dataset string `ImageNet:split=TRAIN|VAL:root=R[:extra=E]` -> `R/train` or `R/val`
    (official layout: `R/<split>/<class id>/*.JPEG`, read here like a class folder, in ImageFolder
    order). `extra` (the official code's cached index) is not needed: the folder is listed directly."""
    name, *tokens = spec.split(":")
    kwargs = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or key not in ("root", "extra", "split"):
            raise ValueError(f"bad dataset string {spec!r}: tokens are split=..., root=..., extra=...")
        kwargs[key] = value
    if name != "ImageNet":
        raise ValueError(f"unsupported official dataset {name!r} in {spec!r}: only ImageNet (use folder:PATH for "
                         "ImageNet-22k or any other image folder)")
    split = kwargs.get("split", "TRAIN")
    if split not in IMAGENET_SPLITS:
        raise ValueError(f"ImageNet split must be one of {sorted(IMAGENET_SPLITS)} (labelled), got {split!r}")
    if not kwargs.get("root"):
        raise ValueError(f"{spec!r} needs root=/path/to/imagenet (the folder holding train/ and val/)")
    return os.path.join(os.path.expanduser(kwargs["root"]), IMAGENET_SPLITS[split])


class TfdsSource:
    """A TFDS array_record dataset via `tfds.data_source` (images decoded here with PIL)."""

    def __init__(self, name: str, split: str, data_dir: str | None = None):
        if not name or not split:
            raise ValueError("tfds spec needs a name and a split: tfds:NAME:SPLIT[:DATA_DIR]")
        import tensorflow_datasets as tfds

        if data_dir and not os.path.isdir(data_dir):
            raise FileNotFoundError(f"TFDS data_dir {data_dir!r} does not exist")
        try:
            features = tfds.builder(name, data_dir=data_dir or None).info.features
        except Exception as e:
            raise ValueError(f"cannot open TFDS dataset {name!r} (data_dir={data_dir!r}): {e}. Prepare it with "
                             "file_format='array_record' (e.g. `tfds build NAME --file_format=array_record`); "
                             "reading it needs no TensorFlow.") from e
        self.image_key = next((k for k, f in features.items() if isinstance(f, tfds.features.Image)), None)
        if self.image_key is None:
            raise ValueError(f"TFDS dataset {name!r} has no Image feature (features: {list(features)})")
        self.label_key = "label" if "label" in features else None
        self.name, self.split, self.data_dir = name, split, data_dir or None
        try:
            self._ds = self._open()
        except Exception as e:
            raise ValueError(f"cannot open TFDS dataset {name!r} split {split!r} (data_dir={data_dir!r}): {e}. "
                             "The dataset must be prepared with file_format='array_record'.") from e
        self._len = len(self._ds)
        if self._len == 0:
            raise ValueError(f"TFDS dataset {name!r} split {split!r} is empty")
        self.skipped = SkippedCounter(f"tfds:{name}:{split}")

    def _open(self):
        import tensorflow_datasets as tfds

        return tfds.data_source(self.name, split=self.split, data_dir=self.data_dir,
                                decoders={self.image_key: tfds.decode.SkipDecoding()})

    def __getstate__(self):
        # grain workers get the source pickled: send the spec, reopen the files in the worker
        state = dict(self.__dict__)
        state["_ds"] = None
        return state

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int):
        if self._ds is None:
            self._ds = self._open()
        ex = self._ds[i]
        try:
            img = decode_image(ex[self.image_key])
        except Exception as e:
            self.skipped.skip(f"record {i}", e)
            return None
        return img, int(ex[self.label_key]) if self.label_key else -1


DEMO_CLASSES = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
                "retina", "colorwheel", "camera", "coins")


class DemoSource:
    """Built-in labelled dataset: 10 classes = 10 scikit-image sample photos (shipped with the package).

    Sample i: class i % 10; a random crop (area 25-100% of the photo, aspect 3/4-4/3) with a random
    horizontal flip, resized to `size` x `size`, seeded by (split, i) so it is deterministic.
    `train` (default 64 per class) and `val` (16 per class) use different seeds: different crops of
    the same photos, a quick SSL + k-NN sanity check where "class" = "same photo". It is easy: a
    10-NN on 8x8 raw-pixel thumbnails already scores ~96 % on val (chance 10 %).
    """

    SPLITS = {"train": (64, 0), "val": (16, 1)}

    def __init__(self, split: str = "train", per_class: int | None = None, size: int = 160):
        if split not in self.SPLITS:
            raise ValueError(f"demo split must be one of {sorted(self.SPLITS)}, got {split!r}")
        default_n, self.seed = self.SPLITS[split]
        self.per_class = per_class or default_n
        self.size = size
        self.classes = list(DEMO_CLASSES)
        self._images = None  # loaded lazily in each process

    def _base(self, c: int) -> Image.Image:
        if self._images is None:
            import skimage.data

            self._images = [to_pil_rgb(getattr(skimage.data, n)()) for n in DEMO_CLASSES]
        return self._images[c]

    def __len__(self) -> int:
        return self.per_class * len(DEMO_CLASSES)

    def __getitem__(self, i: int):
        if not 0 <= i < len(self):
            raise IndexError(i)
        c = i % len(DEMO_CLASSES)
        img = self._base(c)
        rng = np.random.default_rng([self.seed, i])
        W, H = img.size
        frac, aspect = rng.uniform(0.25, 1.0), np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        w = int(min(W, round(np.sqrt(frac * W * H * aspect))))
        h = int(min(H, round(np.sqrt(frac * W * H / aspect))))
        left, top = int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))
        crop = img.crop((left, top, left + w, top + h)).resize((self.size, self.size), Image.BICUBIC)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        return np.asarray(crop), c


def make_source(spec: str):
    """Parse a dataset spec string -> source (see module docstring for the formats)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("empty dataset spec; use folder:PATH, tfds:NAME:SPLIT[:DATA_DIR] or demo")
    kind, _, rest = spec.partition(":")
    if kind == "folder":
        return FolderSource(os.path.expanduser(rest))
    if kind == "tfds":
        parts = rest.split(":", 2)
        if len(parts) < 2:
            raise ValueError(f"bad tfds spec {spec!r}; use tfds:NAME:SPLIT[:DATA_DIR]")
        return TfdsSource(parts[0], parts[1], os.path.expanduser(parts[2]) if len(parts) == 3 else None)
    if kind == "demo":
        return DemoSource(rest or "train")
    if kind in ("shards", "list"):
        from dinov2_jax.data import shards

        path = os.path.expanduser(rest)
        return shards.ShardSource(path) if kind == "shards" else shards.ListSource(path)
    if kind in ("ImageNet", "ImageNet22k"):  # official dataset strings
        return FolderSource(parse_official_dataset(spec))
    raise ValueError(f"unknown dataset spec {spec!r}; use folder:PATH, tfds:NAME:SPLIT[:DATA_DIR], shards:DIR, "
                     "list:FILE, ImageNet:split=...:root=... or demo[:train|val]")
