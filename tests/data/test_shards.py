"""Packed ArrayRecord shards and lazy list files: pack -> shards equals the folder source in the seeded
train order, corrupt inputs skipped and recorded, resumable packing, exact iterator resume, disjoint
processes, list-file offsets index."""
import io
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from configs.ssl_default import get_config
from dinov2_jax.data.pack import encoded_item, pack, verify
from dinov2_jax.data.pipeline import make_eval_loader, make_train_loader, shuffled_shard
from dinov2_jax.data.shards import ListSource, ShardSource, _entry_starts, decode_record, encode_record
from dinov2_jax.data.sources import DemoSource, make_source

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cfg(path):
    cfg = get_config()
    cfg.train.dataset_path = path
    cfg.crops.global_crops_size = 32
    cfg.crops.local_crops_size = 16
    cfg.crops.local_crops_number = 2
    cfg.student.patch_size = 8
    cfg.train.seed = 5
    return cfg


def _make_folder(root, per_class=(4, 3, 4), fmt="JPEG"):
    rng = np.random.default_rng(0)
    for c, n in enumerate(per_class):
        os.makedirs(root / f"class{c}", exist_ok=True)
        for i in range(n):
            arr = rng.integers(0, 256, (24 + i, 30, 3), dtype=np.uint8)
            ext = "jpg" if fmt == "JPEG" else "png"
            Image.fromarray(arr).save(root / f"class{c}" / f"{i}.{ext}", format=fmt)
    return str(root)


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    folder = _make_folder(tmp_path_factory.mktemp("imgs"))
    out = str(tmp_path_factory.mktemp("shards"))
    manifest = pack(f"folder:{folder}", out, shard_size=3, workers=2)  # 11 images -> shards of 3,3,3,2
    return folder, out, manifest


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_record_roundtrip():
    rec = encode_record(b"\xff\xd8 image bytes", 12345678901, "dir/ümlaut.jpg")
    assert decode_record(rec) == (b"\xff\xd8 image bytes", 12345678901, "dir/ümlaut.jpg")
    with pytest.raises(ValueError, match="not a dinov2_jax shard record"):
        decode_record(b"XXXX" + rec[4:])


def test_pack_then_shards_equals_folder_in_seeded_order(packed):
    folder, out, manifest = packed
    src, sh = make_source(f"folder:{folder}"), make_source(f"shards:{out}")
    assert isinstance(sh, ShardSource)
    assert len(sh) == len(src) == manifest["num_records"] == 11
    assert [s["num_records"] for s in manifest["shards"]] == [3, 3, 3, 2]
    assert sh.classes == src.classes == manifest["classes"] == ["class0", "class1", "class2"]
    assert manifest["label_counts"] == {"0": 4, "1": 3, "2": 4} and manifest["skipped"] == []
    for i in range(len(src)):
        data, label, path = sh.encoded(i)
        assert path == src.files[i] and label == src.labels[i]
        with open(src.files[i], "rb") as f:
            assert data == f.read()  # the file's bytes, not a re-encoding
        np.testing.assert_array_equal(np.asarray(sh[i][0]), np.asarray(src[i][0]))
    assert verify(out) == []
    # the whole train pipeline (seeded global shuffle, augmentations, masks) sees the same stream,
    # for a single process and for each of 2 processes
    for p, P, B in ((0, 1, 4), (1, 2, 2)):
        kw = dict(process_index=p, process_count=P, batch_size_per_process=B, num_workers=0)
        a = _take(make_train_loader(_cfg(f"folder:{folder}"), **kw), 4)  # 16 > 11 images: crosses an epoch
        b = _take(make_train_loader(_cfg(f"shards:{out}"), **kw), 4)
        _assert_batches_equal(a, b)
    # and the eval loader (fixed order, labels)
    for x, y in zip(make_eval_loader(f"folder:{folder}", 4, resize_size=36, crop_size=32, process_index=0,
                                     process_count=1),
                    make_eval_loader(f"shards:{out}", 4, resize_size=36, crop_size=32, process_index=0,
                                     process_count=1)):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)


def test_record_index_in_file_or_in_memory_reads_the_same(packed, monkeypatch):
    import dinov2_jax.data.shards as shards

    _, out, _ = packed
    in_file, in_ram = ShardSource(out, index_in_memory=False), ShardSource(out, index_in_memory=True)
    assert [in_file.encoded(i) for i in range(11)] == [in_ram.encoded(i) for i in range(11)]
    assert ShardSource(out).index_in_memory  # default: in RAM for a small dataset...
    monkeypatch.setattr(shards, "IN_MEMORY_INDEX_MAX_RECORDS", 10)
    assert not ShardSource(out).index_in_memory  # ...in the files above the threshold


def test_shard_source_pickles_the_shard_table_only(packed):
    _, out, _ = packed
    sh = make_source(f"shards:{out}")
    clone = pickle.loads(pickle.dumps(sh))
    assert clone.encoded(7) == sh.encoded(7)
    # a grain worker gets one entry per shard: the pickle does not contain any image path
    assert b".jpg" not in pickle.dumps(sh)


def test_corrupt_inputs_skipped_and_recorded(tmp_path):
    folder = _make_folder(tmp_path / "imgs", per_class=(3, 3), fmt="PNG")
    (tmp_path / "imgs" / "class0" / "1b_garbage.jpg").write_bytes(b"this is not a jpeg")
    buf = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(buf, "PNG")
    (tmp_path / "imgs" / "class1" / "0b_truncated.png").write_bytes(buf.getvalue()[:40])
    src = make_source(f"folder:{folder}")
    assert len(src) == 8
    out = str(tmp_path / "out")
    m = pack(f"folder:{folder}", out, shard_size=4, workers=1)
    assert m["source_items"] == 8 and m["num_records"] == 6
    bad = {os.path.basename(s["path"]): s for s in m["skipped"]}
    assert set(bad) == {"1b_garbage.jpg", "0b_truncated.png"}
    for s in m["skipped"]:
        assert src.files[s["source_index"]] == s["path"] and s["error"]
    with open(os.path.join(out, "manifest.json")) as f:
        assert json.load(f)["skipped"] == m["skipped"]
    sh = make_source(f"shards:{out}")
    good = [i for i in range(len(src)) if src[i] is not None]
    assert len(good) == len(sh) == 6
    for j, i in enumerate(good):  # the good images, in source order
        np.testing.assert_array_equal(np.asarray(sh[j][0]), np.asarray(src[i][0]))
        assert sh[j][1] == src[i][1]
    # a damaged shard file is caught by --verify
    shard = os.path.join(out, m["shards"][1]["file"])
    with open(shard, "r+b") as f:
        f.seek(60)
        f.write(b"\x00\x01\x02")
    problems = verify(out)
    assert len(problems) == 1 and "sha256" in problems[0] and m["shards"][1]["file"] in problems[0]


def test_pack_resumes_after_interruption(tmp_path):
    folder = _make_folder(tmp_path / "imgs")
    out = tmp_path / "out"
    m = pack(f"folder:{folder}", str(out), shard_size=4, workers=1)
    names = [s["file"] for s in m["shards"]]
    # simulate a crash while writing shard 1: its sidecar never got written, a .tmp is left behind
    os.remove(out / names[1].replace(".array_record", ".json"))
    os.rename(out / names[1], out / (names[1] + ".tmp"))
    os.remove(out / "manifest.json")
    with pytest.raises(FileNotFoundError, match="has not finished"):
        make_source(f"shards:{out}")
    before = {n: os.stat(out / n).st_mtime_ns for n in (names[0], names[2])}
    m2 = pack(f"folder:{folder}", str(out), shard_size=4, workers=1)
    assert m2 == m
    assert {n: os.stat(out / n).st_mtime_ns for n in (names[0], names[2])} == before  # not rewritten
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
    assert verify(str(out)) == []
    with pytest.raises(ValueError, match="different settings"):
        pack(f"folder:{folder}", str(out), shard_size=5, workers=1)


@pytest.mark.parametrize("spec_kind,process_index,process_count,num_workers",
                         [("shards", 0, 1, 0), ("shards", 1, 2, 0), ("list", 1, 2, 0), ("shards", 0, 1, 2)])
def test_resume_exact_with_new_sources(packed, tmp_path, spec_kind, process_index, process_count, num_workers):
    folder, out, _ = packed
    if spec_kind == "shards":
        spec = f"shards:{out}"
    else:
        src = make_source(f"folder:{folder}")
        lst = tmp_path / "files.txt"
        lst.write_text("".join(f"{p}\t{l}\n" for p, l in zip(src.files, src.labels)))
        spec = f"list:{lst}"
    kw = dict(process_index=process_index, process_count=process_count, batch_size_per_process=2,
              num_workers=num_workers)
    it = make_train_loader(_cfg(spec), **kw)
    _take(it, 3)
    state = json.loads(json.dumps(it.get_state()))  # stored with the checkpoint as JSON
    expected = _take(it, 4)  # crosses the epoch boundary
    fresh = make_train_loader(_cfg(spec), **kw)
    fresh.set_state(state)
    _assert_batches_equal(_take(fresh, 4), expected)


class _Paths:
    """View of a shard source giving each record's original path (what a process actually read)."""

    def __init__(self, src):
        self.src = src

    def __len__(self):
        return len(self.src)

    def __getitem__(self, i):
        return self.src.encoded(i)[2]


def test_two_processes_read_disjoint_parts(packed):
    folder, out, _ = packed
    view = _Paths(make_source(f"shards:{out}"))
    n = len(view)  # 11: odd, so the processes' shares differ by one in the first epoch
    parts = [[shuffled_shard(view, 9, p, 2)[j] for j in range((n + 1 - p) // 2)] for p in range(2)]
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(make_source(f"folder:{folder}").files)


@pytest.mark.heavy
def test_two_real_processes_read_disjoint_parts(packed):
    """Two separate processes open the shards themselves (no shared state) and read their shares."""
    folder, out, _ = packed
    code = ("import json; from dinov2_jax.data.pipeline import shuffled_shard; "
            "from dinov2_jax.data.sources import make_source; src = make_source('shards:{out}'); p = {p}; "
            "s = shuffled_shard(range(len(src)), 9, p, 2); "
            "print(json.dumps([src.encoded(s[j])[2] for j in range((len(src) + 1 - p) // 2)]))")
    procs = [subprocess.Popen([sys.executable, "-c", code.format(out=out, p=p)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
             for p in range(2)]
    parts = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-2000:]
        parts.append(json.loads(stdout.strip().splitlines()[-1]))
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(make_source(f"folder:{folder}").files)


def test_list_source_lazy_offsets(tmp_path):
    folder = _make_folder(tmp_path / "imgs", per_class=(2, 2), fmt="PNG")
    src = make_source(f"folder:{folder}")
    rel = [os.path.relpath(f, tmp_path) for f in src.files]
    lines = ["# curated list", f"{rel[0]}\t0", "", f"{src.files[1]}\t0\r", f"{rel[2]}", f"{rel[3]}\t7",
             "imgs/missing.png\t1"]
    lst = tmp_path / "files.txt"
    lst.write_text("\n".join(lines))  # no trailing newline
    ls = make_source(f"list:{lst}")
    assert isinstance(ls, ListSource) and len(ls) == 5
    assert [ls.entry(i) for i in range(5)] == [(src.files[0], 0), (src.files[1], 0), (src.files[2], -1),
                                               (src.files[3], 7), (str(tmp_path / "imgs/missing.png"), 1)]
    for i in range(4):
        np.testing.assert_array_equal(np.asarray(ls[i][0]), np.asarray(src[i][0]))
    assert ls[4] is None and ls.skipped.count == 1  # missing file: skipped like an undecodable one
    assert ls.index_path == str(lst) + ".offsets.npy"
    mtime = os.stat(ls.index_path).st_mtime_ns
    assert make_source(f"list:{lst}").index_path == ls.index_path
    assert os.stat(ls.index_path).st_mtime_ns == mtime  # reused, not rebuilt
    # workers get file names, not entries: the pickle does not grow with the list
    big = tmp_path / "big.txt"
    big.write_text("".join(f"{src.files[i % 4]}\t{i % 2}\n" for i in range(5000)))
    with open(big, "a") as f:
        f.write("d/" * 3000 + "long.png\t3\n")  # longer than one 4096-byte read
    big_src = ListSource(str(big))
    assert len(big_src) == 5001 and big_src.entry(4321) == (src.files[1], 1)
    assert big_src.entry(5000) == (str(tmp_path / ("d/" * 3000 + "long.png")), 3)
    assert len(pickle.dumps(big_src)) < 2000
    clone = pickle.loads(pickle.dumps(big_src))
    assert clone.entry(4999) == (src.files[3], 1)
    # editing the list invalidates the index
    lst.write_text(f"{rel[3]}\t2\n{rel[0]}\tx\n")
    ls2 = make_source(f"list:{lst}")
    assert len(ls2) == 2 and ls2.entry(0) == (src.files[3], 2)
    with pytest.raises(ValueError, match="not an integer"):
        ls2.entry(1)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_source(f"list:{tmp_path / 'nope.txt'}")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="no entries"):
        make_source(f"list:{tmp_path / 'empty.txt'}")


def test_list_offsets_exact_across_chunk_boundaries(tmp_path):
    """The streaming scan equals a line-by-line reference for any chunk size (boundaries inside lines,
    on newlines, on '\r\n', on blank and comment lines)."""
    text = b"a.png\t1\n\n#c\r\nbb/c.jpg\r\n\n\nddd.png\t22\n#x\n e.png\nf.png"
    lst = tmp_path / "l.txt"
    lst.write_bytes(text)
    ref, pos = [], 0
    for line in text.split(b"\n"):
        if line and line[:1] not in (b"\r", b"#"):
            ref.append(pos)
        pos += len(line) + 1
    for chunk in range(1, len(text) + 2):
        np.testing.assert_array_equal(np.concatenate(list(_entry_starts(str(lst), chunk))), ref, err_msg=chunk)
    src = ListSource(str(lst))
    assert [src.entry(i)[0] for i in range(len(src))] == [
        str(tmp_path / n) for n in ("a.png", "bb/c.jpg", "ddd.png", " e.png", "f.png")]


def test_list_index_falls_back_to_cache_dir(tmp_path, monkeypatch):
    import dinov2_jax.data.shards as shards

    folder = _make_folder(tmp_path / "imgs", per_class=(2,), fmt="PNG")
    lst = tmp_path / "files.txt"
    lst.write_text("".join(f"{f}\n" for f in make_source(f"folder:{folder}").files))
    (tmp_path / "not_a_dir").write_text("")
    unwritable = str(tmp_path / "not_a_dir" / "files.txt.offsets.npy")  # its folder cannot be created
    cache = str(tmp_path / "cache" / "x.offsets.npy")
    monkeypatch.setattr(shards, "_index_paths", lambda f: [unwritable, cache])
    ls = ListSource(str(lst))
    assert ls.index_path == cache and len(ls) == 2 and ls.entry(1)[0] == make_source(f"folder:{folder}").files[1]
    monkeypatch.setattr(shards, "_index_paths", lambda f: [unwritable])
    lst.write_text(lst.read_text() + "x.png\n")  # stale index -> rebuild -> nowhere to write it
    with pytest.raises(OSError, match="cannot write the offsets index"):
        ListSource(str(lst))


def test_pack_list_and_pixel_sources(tmp_path):
    folder = _make_folder(tmp_path / "imgs", per_class=(2, 1), fmt="PNG")
    src = make_source(f"folder:{folder}")
    lst = tmp_path / "files.txt"
    lst.write_text("".join(f"{p}\t{l}\n" for p, l in zip(src.files, src.labels)))
    m = pack(f"list:{lst}", str(tmp_path / "out"), shard_size=2, workers=1)
    sh = make_source(f"shards:{tmp_path / 'out'}")
    assert m["num_records"] == 3
    assert [sh.encoded(i)[1:] for i in range(3)] == [(int(l), p) for p, l in zip(src.files, src.labels)]
    # a source that only gives pixels is stored losslessly as PNG
    demo = DemoSource("val", per_class=1, size=24)
    data, label, _ = encoded_item(demo, 3)
    assert label == 3
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), demo[3][0])


def test_shards_open_lazily_and_missing_shard_is_a_clear_error(packed, tmp_path):
    import shutil

    _, out, manifest = packed
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    os.remove(copy / manifest["shards"][2]["file"])  # records 6..8
    sh = make_source(f"shards:{copy}")  # start-up does not touch the shard files
    assert len(sh) == 11 and sh[0] is not None and sh[9] is not None
    with pytest.raises(OSError, match="cannot read record 7 .*--verify"):
        sh[7]
    assert verify(str(copy)) == [f"{manifest['shards'][2]['file']}: missing"]


def test_bad_shard_specs(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_source(f"shards:{tmp_path / 'nope'}")
    with pytest.raises(FileNotFoundError, match="has not finished"):
        make_source(f"shards:{tmp_path}")
    with pytest.raises(ValueError, match="empty shards path"):
        make_source("shards:")


def test_pack_cli(packed, tmp_path):
    folder, _, _ = packed
    run = lambda *a: subprocess.run([sys.executable, "-m", "dinov2_jax.data.pack", *a], capture_output=True,
                                    text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, timeout=120)
    r = run(f"folder:{folder}", str(tmp_path / "o"), "--shard-size", "6", "--workers", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "11 records in 2 shards, 3 classes, 0 skipped" in r.stdout
    r = run("--verify", str(tmp_path / "o"))
    assert r.returncode == 0 and "2 shards, 11 records: OK" in r.stdout



@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    """A 6-image TFDS dataset in array_record format (PNG bytes; pixel value = example index)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    data_dir = str(tmp_path_factory.mktemp("tfds"))

    class TinyPackImages(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)), "label": tfds.features.ClassLabel(num_classes=3)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(6):
                buf = io.BytesIO()
                Image.fromarray(np.full((10 + i, 12, 3), i, np.uint8)).save(buf, "PNG")
                yield i, {"image": buf.getvalue(), "label": i % 3}

    TinyPackImages(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return data_dir


def test_pack_tfds_keeps_stored_bytes(tfds_dir, tmp_path):
    spec = f"tfds:tiny_pack_images:train:{tfds_dir}"
    src = make_source(spec)
    m = pack(spec, str(tmp_path / "out"), shard_size=4, workers=1)
    sh = make_source(f"shards:{tmp_path / 'out'}")
    assert m["num_records"] == len(sh) == len(src) == 6
    for i in range(6):
        data, label, path = sh.encoded(i)
        assert data == bytes(src._ds[i]["image"]) and path == f"tfds:tiny_pack_images:train[{i}]"
        np.testing.assert_array_equal(np.asarray(sh[i][0]), np.asarray(src[i][0]))
        assert label == src[i][1]
