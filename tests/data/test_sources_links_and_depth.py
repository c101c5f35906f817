"""Folder sources with symlink loops / links between classes, and 16-bit grayscale images."""
import os

import numpy as np
from PIL import Image

from dinov2_jax.data.sources import decode_image, make_source


def _img(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def test_symlink_loop_lists_every_file_once_with_its_label(tmp_path, caplog):
    root = tmp_path / "data"
    for c, n in (("a", 2), ("b", 3)):
        for i in range(n):
            _img(str(root / c / f"{i}.png"), 10 * i)
    os.symlink(root / "a", root / "a" / "loop")  # a/loop -> a: os.walk(followlinks) would recurse ~40 times
    os.symlink(root, root / "b" / "up")  # b/up -> the dataset root: a/ and b/ again, under label b
    os.symlink(root / "a", root / "b" / "other_class")  # b/other_class -> a: a's images under label b
    src = make_source(f"folder:{root}")
    assert src.classes == ["a", "b"]
    assert len(src) == 5, src.files
    assert len({os.path.realpath(f) for f in src.files}) == 5
    assert [os.path.relpath(f, root) for f in src.files] == ["a/0.png", "a/1.png", "b/0.png", "b/1.png", "b/2.png"]
    assert list(src.labels) == [0, 0, 1, 1, 1]
    assert "symlink loop" in caplog.text


def test_symlinked_subfolder_outside_the_root_is_followed(tmp_path):
    _img(str(tmp_path / "elsewhere" / "x.png"), 1)
    _img(str(tmp_path / "data" / "a" / "y.png"), 2)
    os.symlink(tmp_path / "elsewhere", tmp_path / "data" / "a" / "more")
    src = make_source(f"folder:{tmp_path / 'data'}")
    assert sorted(os.path.relpath(f, tmp_path / "data") for f in src.files) == ["a/more/x.png", "a/y.png"]


def test_16bit_grayscale_png_is_scaled_to_8_bits(tmp_path):
    wide = (np.arange(16 * 16, dtype=np.uint32).reshape(16, 16) * 257).astype(np.uint16)  # 0..65535 (step 257)
    path = tmp_path / "g16.png"
    Image.fromarray(wide).save(path)
    assert Image.open(path).mode.startswith("I")
    rgb = np.asarray(decode_image(str(path)))
    assert rgb.dtype == np.uint8 and rgb.shape == (16, 16, 3)
    np.testing.assert_array_equal(rgb[..., 0], np.arange(256).reshape(16, 16))  # v * 257 -> v exactly
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
    mid = tmp_path / "mid.png"
    Image.fromarray(np.full((4, 4), 32768, np.uint16)).save(mid)
    assert np.asarray(decode_image(str(mid))).max() == 128  # PIL's convert("RGB") gives 255 (clipped)
