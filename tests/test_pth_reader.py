"""The torch-free `.pth` reader / writer (dinov2_jax.weights.pth) against torch itself: bit-exact values and
dtypes (with torch hidden from imports), views / shared storages / bfloat16, files torch.load reads back,
and one clear line for truncated, foreign or unsafe files."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from dinov2_jax.weights.pth import WeightsFileError, read_pth, write_pth

torch = pytest.importorskip("torch")
FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models", "fixtures")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs with torch unimportable: a meta-path finder refuses `torch` and its submodules.
NO_TORCH = textwrap.dedent("""
    import sys

    class _NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is hidden for this test")
            return None

    sys.meta_path.insert(0, _NoTorch())
    import numpy as np
    from dinov2_jax.weights.pth import read_pth
    from dinov2_jax.pretrained import from_pretrained

    src, out = sys.argv[1], sys.argv[2]
    obj = read_pth(src)
    flat = {}
    def walk(node, prefix):
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, prefix + k + "/")
            elif isinstance(v, np.ndarray):
                flat[prefix + k] = v.view(np.uint16) if v.dtype.name == "bfloat16" else v
                flat["dtype:" + prefix + k] = np.asarray(v.dtype.name)
            else:
                flat["value:" + prefix + k] = np.asarray(repr(v))
    walk(obj, "")
    m = from_pretrained(src, num_heads=2)
    x = np.random.default_rng(0).normal(size=(1, 56, 56, 3)).astype(np.float32)
    flat["features:cls"] = np.asarray(m.features(x)["cls"])
    np.savez(out, **flat)
    assert not any(k == "torch" or k.startswith("torch.") for k in sys.modules), "torch was imported"
""")


def _teacher_checkpoint(path):
    """An official-style teacher checkpoint: chunked blocks, heads, an int, a bf16 tensor, views of one
    storage and a transposed (non-contiguous) tensor."""
    d = np.load(os.path.join(FIX, "backbone_vits14_reg4.npz"))
    sd = {k[3:]: torch.from_numpy(d[k].astype(np.float32)) for k in d.files if k.startswith("sd/")}
    h = np.load(os.path.join(FIX, "dino_head.npz"))
    teacher = {f"backbone.{k}": v for k, v in sd.items()}
    teacher.update({f"dino_head.{k[3:]}": torch.from_numpy(h[k].astype(np.float32)) for k in h.files
                    if k.startswith("sd/")})
    base = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    extras = {"row": base[2], "col_t": base.t(), "half": base.to(torch.bfloat16), "ids": torch.arange(5),
              "flag": torch.tensor([True, False])}
    torch.save({"teacher": teacher, "extras": extras, "iteration": 1234, "note": "x"}, path)


def _assert_same_as_torch(mine, ref, key=""):
    if isinstance(ref, dict):
        assert set(mine) == set(ref), key
        for k in ref:
            _assert_same_as_torch(mine[k], ref[k], f"{key}/{k}")
    elif isinstance(ref, torch.Tensor):
        if ref.dtype == torch.bfloat16:
            assert mine.dtype.name == "bfloat16", key
            assert np.array_equal(mine.view(np.uint16), ref.view(torch.int16).numpy().view(np.uint16)), key
        else:
            r = ref.numpy()
            assert mine.dtype == r.dtype and mine.shape == r.shape, key
            assert mine.tobytes() == np.ascontiguousarray(r).tobytes(), key  # bit for bit
    else:
        assert mine == ref, key


def test_reader_equals_torch_load_bit_for_bit(tmp_path):
    path = str(tmp_path / "teacher_checkpoint.pth")
    _teacher_checkpoint(path)
    ref = torch.load(path, map_location="cpu", weights_only=True)
    _assert_same_as_torch(read_pth(path), ref)


def test_reader_without_torch_installed(tmp_path):
    path = str(tmp_path / "teacher_checkpoint.pth")
    _teacher_checkpoint(path)
    out = str(tmp_path / "out.npz")
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, "-c", NO_TORCH, path, out], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = np.load(out)
    ref = torch.load(path, map_location="cpu", weights_only=True)
    n = 0
    for part in ("teacher", "extras"):
        for k, v in ref[part].items():
            key = f"{part}/{k}"
            if v.dtype == torch.bfloat16:
                assert str(got["dtype:" + key]) == "bfloat16"
                assert np.array_equal(got[key], v.view(torch.int16).numpy().view(np.uint16)), key
            else:
                assert got[key].dtype == v.numpy().dtype and got[key].tobytes() == v.contiguous().numpy().tobytes(), key
            n += 1
    assert n == len(ref["teacher"]) + len(ref["extras"]) and str(got["value:iteration"]) == "1234"
    # the same file read with torch present gives the same features
    from dinov2_jax.pretrained import from_pretrained

    x = np.random.default_rng(0).normal(size=(1, 56, 56, 3)).astype(np.float32)
    np.testing.assert_array_equal(got["features:cls"], np.asarray(from_pretrained(path, num_heads=2).features(x)["cls"]))


def test_writer_is_read_by_torch(tmp_path):
    import ml_dtypes

    rng = np.random.default_rng(1)
    obj = {"teacher": {"a": rng.normal(size=(3, 4)).astype(np.float32), "b": np.arange(6, dtype=np.int64).reshape(2, 3),
                       "c": rng.normal(size=(5,)).astype(ml_dtypes.bfloat16), "s": np.array(2.5, np.float32),
                       "t": rng.normal(size=(4, 3)).astype(np.float32).T},
           "iteration": 7, "lr": 0.5, "names": ["x", None, True]}
    path = str(tmp_path / "w.pth")
    write_pth(obj, path)
    got = torch.load(path, map_location="cpu", weights_only=True)
    for k, v in obj["teacher"].items():
        t = got["teacher"][k]
        if v.dtype.name == "bfloat16":
            assert t.dtype == torch.bfloat16 and np.array_equal(t.view(torch.int16).numpy().view(np.uint16),
                                                                 v.view(np.uint16))
        else:
            assert t.numpy().dtype == v.dtype and t.shape == v.shape and np.array_equal(t.numpy(), v), k
    assert got["iteration"] == 7 and got["lr"] == 0.5 and got["names"] == ["x", None, True]
    with pytest.raises(FileExistsError, match="overwrite"):
        write_pth(obj, path)
    _assert_same_as_torch(read_pth(path), got)


def test_bad_files_give_one_clear_line(tmp_path):
    good = str(tmp_path / "good.pth")
    torch.save({"a": torch.zeros(1000)}, good)
    raw = open(good, "rb").read()
    cases = {"truncated.pth": raw[: len(raw) // 2], "text.pth": b"<html>404 Not Found</html>", "empty.pth": b"",
             "cut_record.pth": None}
    for name, data in cases.items():
        if data is None:  # a complete archive whose tensor record is shorter than the tensor
            import zipfile

            with zipfile.ZipFile(good) as zin, zipfile.ZipFile(tmp_path / name, "w") as zout:
                for n in zin.namelist():
                    b = zin.read(n)
                    zout.writestr(n, b[:100] if n.endswith("data/0") else b)
        else:
            (tmp_path / name).write_bytes(data)
        with pytest.raises(WeightsFileError) as e:
            read_pth(str(tmp_path / name))
        msg = str(e.value)
        assert "\n" not in msg and name in msg, msg
        assert any(w in msg for w in ("truncated", "not a PyTorch checkpoint")), msg
    with pytest.raises(FileNotFoundError, match="not found"):
        read_pth(str(tmp_path / "nope.pth"))

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"a": Evil()}, str(tmp_path / "evil.pth"))
    with pytest.raises(WeightsFileError, match="refusing to load .*system"):
        read_pth(str(tmp_path / "evil.pth"))
    assert not (tmp_path / "pwned").exists()


def test_legacy_format_uses_torch_when_present(tmp_path, monkeypatch):
    path = str(tmp_path / "legacy.pth")
    ref = {"a": torch.randn(3, 2), "h": torch.randn(4).to(torch.bfloat16), "n": 3}
    torch.save(ref, path, _use_new_zipfile_serialization=False)
    _assert_same_as_torch(read_pth(path), ref)
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(WeightsFileError, match="legacy .*needs torch"):
        read_pth(path)
