"""Image sources: folder layouts, tfds array_record, demo, spec parsing, corrupt files."""
import io
import logging
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from dinov2_jax.data.sources import DemoSource, FolderSource, TfdsSource, list_images, make_source, to_pil_rgb


def _save(path, seed, size=(20, 16), fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format=fmt)
    return arr


def test_class_folder_layout(tmp_path):
    _save(str(tmp_path / "n02" / "a.JPEG"), 0, fmt="JPEG")
    _save(str(tmp_path / "n01" / "x.png"), 1)
    _save(str(tmp_path / "n01" / "sub" / "y.webp"), 2, fmt="WEBP")
    _save(str(tmp_path / "n01" / "z.Jpg"), 3, fmt="JPEG")
    (tmp_path / "n01" / "notes.txt").write_text("not an image")
    os.makedirs(tmp_path / "empty_class")
    src = make_source(f"folder:{tmp_path}")
    assert isinstance(src, FolderSource)
    assert src.classes == ["n01", "n02"]
    assert len(src) == 4
    labels = [src[i][1] for i in range(4)]
    assert labels == [0, 0, 0, 1]
    names = [os.path.basename(f) for f in src.files]
    assert sorted(names[:3]) == ["x.png", "y.webp", "z.Jpg"]
    img, _ = src[0]
    assert isinstance(img, Image.Image) and img.mode == "RGB"


def test_flat_folder_and_png_exact(tmp_path):
    arr = _save(str(tmp_path / "b.png"), 4)
    _save(str(tmp_path / "a.jpeg"), 5, fmt="JPEG")
    src = make_source(f"folder:{tmp_path}")
    assert src.classes == [] and len(src) == 2
    assert [os.path.basename(f) for f in src.files] == ["a.jpeg", "b.png"]
    img, label = src[1]
    assert label == -1
    np.testing.assert_array_equal(np.asarray(img), arr)  # lossless round trip


def test_missing_and_empty_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_source(f"folder:{tmp_path / 'nope'}")
    with pytest.raises(ValueError, match="no images"):
        make_source(f"folder:{tmp_path}")
    with pytest.raises(ValueError, match="empty folder path"):
        make_source("folder:")
    with pytest.raises(ValueError, match="unknown dataset spec"):
        make_source("imagenet:/x")
    with pytest.raises(ValueError, match="empty dataset spec"):
        make_source("")
    with pytest.raises(ValueError, match="tfds:NAME:SPLIT"):
        make_source("tfds:mnist")
    with pytest.raises(ValueError, match="demo split"):
        make_source("demo:test")


def test_corrupt_files_are_skipped_with_counted_warning(tmp_path, caplog):
    _save(str(tmp_path / "c" / "good.png"), 0)
    (tmp_path / "c" / "garbage.jpg").write_bytes(b"this is not a jpeg at all")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (tmp_path / "c" / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    src = make_source(f"folder:{tmp_path}")
    assert len(src) == 3
    with caplog.at_level(logging.WARNING):
        got = [src[i] for i in range(3)]
    names = [os.path.basename(f) for f in src.files]
    assert got[names.index("good.png")] is not None
    assert got[names.index("garbage.jpg")] is None and got[names.index("truncated.jpg")] is None
    assert src.skipped.count == 2
    msgs = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(msgs) == 2 and "2 skipped so far" in msgs[-1]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert src[names.index("garbage.jpg")] is None  # next epoch: counted, not re-logged
    assert src.skipped.count == 3 and not [r for r in caplog.records if "unreadable" in r.getMessage()]


def test_demo_source_deterministic_and_labelled():
    src = make_source("demo")
    assert isinstance(src, DemoSource) and len(src) == 640 and len(src.classes) == 10
    img, label = src[13]
    assert img.shape == (160, 160, 3) and img.dtype == np.uint8 and label == 3
    np.testing.assert_array_equal(src[13][0], DemoSource("train")[13][0])
    assert not np.array_equal(src[13][0], src[23][0])  # same class, different crop
    val = make_source("demo:val")
    assert len(val) == 160
    assert not np.array_equal(val[13][0], img)
    assert sorted({val[i][1] for i in range(20)}) == list(range(10))


# ---------------------------------------------------------------- tfds (array_record, no TensorFlow)


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    tfds = pytest.importorskip("tensorflow_datasets")
    data_dir = str(tmp_path_factory.mktemp("tfds"))

    class TinyDinoImages(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "label": tfds.features.ClassLabel(num_classes=3)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(6, 0), "validation": self._generate_examples(3, 100)}

        def _generate_examples(self, n, off):
            for i in range(n):
                # encoded bytes: encoding raw arrays would need TensorFlow
                arr = np.full((10 + i, 12, 3), off + i, np.uint8)
                buf = io.BytesIO()
                Image.fromarray(arr).save(buf, "PNG")
                yield i, {"image": buf.getvalue(), "label": i % 3}

    TinyDinoImages(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return data_dir


def test_tfds_array_record_source(tfds_dir):
    import sys

    src = make_source(f"tfds:tiny_dino_images:train:{tfds_dir}")
    assert isinstance(src, TfdsSource) and len(src) == 6
    seen = {}
    for i in range(6):
        img, label = src[i]
        arr = np.asarray(img)
        k = int(arr[0, 0, 0])  # pixel value encodes the example index
        assert arr.shape == (10 + k, 12, 3) and label == k % 3
        seen[k] = label
    assert sorted(seen) == list(range(6))
    # grain worker processes receive the source pickled
    clone = pickle.loads(pickle.dumps(src))
    np.testing.assert_array_equal(np.asarray(clone[2][0]), np.asarray(src[2][0]))
    assert len(make_source(f"tfds:tiny_dino_images:validation:{tfds_dir}")) == 3
    assert "tensorflow" not in sys.modules
    with pytest.raises(ValueError, match="cannot open TFDS"):
        make_source(f"tfds:tiny_dino_images:nosuchsplit:{tfds_dir}")
    with pytest.raises(FileNotFoundError):
        make_source(f"tfds:tiny_dino_images:train:{tfds_dir}/missing")


def test_tfds_source_opens_without_builder_code(tfds_dir):
    """A fresh process (like a grain worker or a user's training run) has no builder class: the
    prepared array_record files and their dataset_info are enough."""
    import subprocess
    import sys

    code = ("from dinov2_jax.data.sources import make_source; import sys; "
            f"s = make_source('tfds:tiny_dino_images:train:{tfds_dir}'); "
            "img, lab = s[0]; print(len(s), img.size[0], 'tensorflow' in sys.modules)")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120,
                         env={**os.environ, "PYTHONPATH": root})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-3:] == ["6", "12", "False"]


def test_to_pil_rgb_modes_and_errors():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for x in (gray, gray[..., None], Image.fromarray(gray, "L")):
        out = to_pil_rgb(x)
        assert out.mode == "RGB" and out.size == (4, 3)
        np.testing.assert_array_equal(np.asarray(out)[..., 1], gray)
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 7, 9
    np.testing.assert_array_equal(np.asarray(to_pil_rgb(rgba)), rgba[..., :3])  # alpha dropped
    mask = np.array([[True, False]])
    np.testing.assert_array_equal(np.asarray(to_pil_rgb(mask))[..., 0], [[255, 0]])
    with pytest.raises(TypeError, match="uint8"):
        to_pil_rgb(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        to_pil_rgb(np.zeros((4, 4, 2), np.uint8))


def test_list_images_relative_sorted_any_case(tmp_path):
    for name in ("b/x.PNG", "a.jpg", "b/c/y.tiff", "notes.txt"):
        (tmp_path / "r" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "r" / name).write_bytes(b"")
    os.symlink(tmp_path / "r" / "b", tmp_path / "r" / "link")  # a second path to b/: listed once
    assert list_images(str(tmp_path / "r")) == ["a.jpg", "b/c/y.tiff", "b/x.PNG"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        list_images(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="not a directory"):
        list_images(str(tmp_path / "missing"))
