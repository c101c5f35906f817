"""Sources for datasets too large to list at start-up: packed ArrayRecord shards and lazy list files.

- `shards:DIR` (`ShardSource`): the output of `python -m dinov2_jax.data.pack SOURCE DIR`. Start-up
  reads only `DIR/manifest.json` (one entry per shard, not per image); the shard files are opened
  lazily on first read, each record by random access (`group_size:1`), through Grain's
  `ArrayRecordDataSource`. What a Grain worker receives pickled is that per-shard table.
- `list:FILE` (`ListSource`): one image per line, `PATH` or `PATH<TAB>LABEL` (as a curation step
  writes); relative paths are relative to FILE's folder; blank lines and lines starting with `#` are
  ignored. The byte offset of every entry is computed once (numpy scan) and cached beside FILE as
  `FILE.offsets.npy`; every process memory-maps it (the OS page cache shares it between workers), and
  reads entry i with a positional read at its offset. Nothing per-image is pickled into workers.

Both return `(PIL RGB image, label)` or None (counted warning) for an image that does not decode, like
the other sources, so the train pipeline's seeded global shuffle (`grain.MapDataset.shuffle`, a
lazily computed permutation) and its exact-resume iterator state work unchanged.

Record layout (one ArrayRecord record per image): `b"DJR1"`, label int64, path length uint32 (little
endian), the UTF-8 original path, then the encoded image bytes exactly as read from the source.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import tempfile

import numpy as np

from dinov2_jax.data.sources import SkippedCounter, decode_image

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "dinov2_jax-shards-v1"
_MAGIC = b"DJR1"
_HEADER = struct.Struct("<4sqI")  # magic, label, path length
IN_MEMORY_INDEX_MAX_RECORDS = 4_000_000  # ShardSource's default: record index in RAM up to this size


def encode_record(image_bytes: bytes, label: int, path: str) -> bytes:
    """(encoded image, label, original path) -> one shard record (layout in the module docstring)."""
    p = path.encode("utf-8")
    return _HEADER.pack(_MAGIC, int(label), len(p)) + p + bytes(image_bytes)


def decode_record(record: bytes) -> tuple[bytes, int, str]:
    """Inverse of `encode_record` -> (encoded image bytes, label, original path)."""
    magic, label, n = _HEADER.unpack_from(record)
    if magic != _MAGIC:
        raise ValueError(f"not a dinov2_jax shard record (magic {magic!r}); was the shard written by "
                         "`python -m dinov2_jax.data.pack`?")
    start = _HEADER.size
    return bytes(record[start + n:]), int(label), bytes(record[start:start + n]).decode("utf-8")


def load_manifest(root: str) -> dict:
    """Read and check `root/manifest.json` (written by the last step of `dinov2_jax.data.pack`)."""
    path = os.path.join(root, MANIFEST)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"shards folder {root!r} does not exist; write it with "
                                f"`python -m dinov2_jax.data.pack SOURCE {root}`")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: the pack into {root!r} has not finished (rerun "
                                f"`python -m dinov2_jax.data.pack SOURCE {root}`: it resumes)")
    with open(path) as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path} has format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


class ShardSource:
    """Packed ArrayRecord shards (`shards:DIR`): random access to record i over all shards, in order."""

    def __init__(self, root: str, *, index_in_memory: bool | None = None):
        """index_in_memory: keep each opened shard's record index in RAM (9-29 bytes per record measured)
        instead of reading it from the shard file (page cache) for every record; lookups are ~30x faster
        (~30 us vs ~1 ms per record on a busy 2-core VM, docs/benchmarks.md). None (default): in RAM up
        to `IN_MEMORY_INDEX_MAX_RECORDS` records (<= ~120 MB per worker), else in the file, so that a
        worker does not grow to 1-4 GB at 142M images once it has read from every shard."""
        if not root:
            raise ValueError("empty shards path: use shards:/path/to/packed_dir")
        import grain

        manifest = load_manifest(root)
        self.root = root
        self.classes = list(manifest["classes"])
        self.num_skipped_at_pack = len(manifest["skipped"])
        # "file[0:n]" read instructions: the record counts come from the manifest, so no shard file is
        # opened (or even listed) here; readers open on first access. For big datasets each open
        # reader's per-record index stays in the file ("offloaded") instead of in every worker's memory.
        paths = [f"{os.path.join(root, s['file'])}[0:{s['num_records']}]"
                 for s in manifest["shards"] if s["num_records"] > 0]
        if not paths:
            raise ValueError(f"{root!r}: the manifest lists no records (every input was skipped, see "
                             f"'skipped' in {os.path.join(root, MANIFEST)})")
        if index_in_memory is None:
            index_in_memory = manifest["num_records"] <= IN_MEMORY_INDEX_MAX_RECORDS
        self.index_in_memory = bool(index_in_memory)
        options = ({"index_storage_option": "in_memory"} if index_in_memory else
                   {"index_storage_option": "offloaded", "footer_prefetch_bytes": "0"})
        self._ds = grain.sources.ArrayRecordDataSource(paths, reader_options=options)
        if len(self._ds) != manifest["num_records"]:
            raise ValueError(f"{root!r}: shard counts sum to {len(self._ds)} records but the manifest says "
                             f"{manifest['num_records']}; the manifest is corrupt, rerun the pack")
        self.skipped = SkippedCounter(f"shards:{root}")

    def __len__(self) -> int:
        return len(self._ds)

    def encoded(self, i: int) -> tuple[bytes, int, str]:
        """Record i undecoded -> (image bytes, label, original path)."""
        try:
            record = self._ds[i]
        except (RuntimeError, OSError) as e:  # a missing / truncated shard file is not a bad image
            raise OSError(f"cannot read record {i} of shards:{self.root} ({e}); check the shard files "
                          f"with `python -m dinov2_jax.data.pack --verify {self.root}`") from e
        return decode_record(record)

    def __getitem__(self, i: int):
        data, label, path = self.encoded(int(i))
        try:
            img = decode_image(data)
        except Exception as e:  # packing checked every image decodes; a different PIL may disagree
            self.skipped.skip(path, e)
            return None
        return img, label


# ----------------------------------------------------------------------------- list files


def _entry_starts(path: str, chunk: int = 1 << 24):
    """Yield, chunk by chunk, the byte offsets (int64) of a list file's entries: lines that are not
    blank and do not start with '#'. Memory is O(chunk) whatever the file size."""
    with open(path, "rb") as f:
        pos, pending = 0, True  # pending: a line starts at this chunk's first byte
        while True:
            buf = f.read(chunk)
            if not buf:
                return
            a = np.frombuffer(buf, np.uint8)
            local = np.flatnonzero(a == ord("\n")) + 1
            local = local[local < len(a)]  # a newline ending the chunk starts a line in the next one
            if pending:
                local = np.concatenate([np.zeros(1, local.dtype), local])
            pending = bool(a[-1] == ord("\n"))
            first = a[local]
            keep = (first != ord("\n")) & (first != ord("\r")) & (first != ord("#"))
            yield local[keep].astype(np.int64) + pos
            pos += len(a)


def _index_paths(list_file: str) -> list[str]:
    """Where the offsets index may live: beside the list file, else in the user cache."""
    key = hashlib.sha1(os.path.abspath(list_file).encode()).hexdigest()[:16]
    cache = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "dinov2_jax",
                         "list_index", f"{key}.offsets.npy")
    return [list_file + ".offsets.npy", cache]


def _index_is_fresh(index: str, list_file: str) -> bool:
    meta = index[:-len(".npy")] + ".json"
    if not (os.path.isfile(index) and os.path.isfile(meta)):
        return False
    st = os.stat(list_file)
    with open(meta) as f:
        m = json.load(f)
    return m.get("size") == st.st_size and m.get("mtime_ns") == st.st_mtime_ns


def _write_index(list_file: str, index: str, count: int, st: os.stat_result) -> None:
    """Write the `count` entry offsets of `list_file` to `index` (.npy) and its freshness stamp (.json)."""
    os.makedirs(os.path.dirname(os.path.abspath(index)), exist_ok=True)
    # temp file + rename: processes building the same index at once never see a partial file
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(index)), suffix=".tmp.npy")
    os.close(fd)
    try:
        out = np.lib.format.open_memmap(tmp, "w+", np.int64, (count,)) if count else np.zeros(0, np.int64)
        n = 0
        for part in _entry_starts(list_file):
            out[n:n + len(part)] = part[:max(0, count - n)]
            n += len(part)
        if n != count:
            raise ValueError(f"{list_file} changed while it was being indexed; retry")
        if count:
            out.flush()
            del out
        else:
            np.save(tmp, out)
        os.replace(tmp, index)
        with open(tmp + ".json", "w") as f:
            json.dump({"size": st.st_size, "mtime_ns": st.st_mtime_ns, "entries": count}, f)
        os.replace(tmp + ".json", index[:-len(".npy")] + ".json")
    finally:
        for leftover in (tmp, tmp + ".json"):
            if os.path.exists(leftover):
                os.remove(leftover)


def line_index(list_file: str) -> str:
    """Path of the cached offsets index of `list_file` (built if missing or older than the file)."""
    candidates = _index_paths(list_file)
    for index in candidates:
        if _index_is_fresh(index, list_file):
            return index
    st = os.stat(list_file)
    count = sum(len(part) for part in _entry_starts(list_file))  # streaming passes: count, then fill
    errors = []
    for index in candidates:
        try:
            _write_index(list_file, index, count, st)
        except OSError as e:
            errors.append(f"{index}: {e}")
            continue
        if index != candidates[0]:
            logger.info("list file folder not writable (%s); offsets index cached at %s", errors[0], index)
        return index
    raise OSError(f"cannot write the offsets index of {list_file}: {'; '.join(errors)}")


class ListSource:
    """`list:FILE`: entry i = line i of FILE (`PATH` or `PATH<TAB>LABEL`), read lazily by byte offset."""

    def __init__(self, list_file: str):
        if not list_file:
            raise ValueError("empty list path: use list:/path/to/files.txt (one PATH[<TAB>LABEL] per line)")
        if not os.path.isfile(list_file):
            raise FileNotFoundError(f"list file {list_file!r} does not exist")
        self.list_file = os.path.abspath(list_file)
        self.base = os.path.dirname(self.list_file)
        self.index_path = line_index(self.list_file)
        self._offsets = np.load(self.index_path, mmap_mode="r")
        self._len = len(self._offsets)
        if self._len == 0:
            raise ValueError(f"list file {list_file!r} has no entries (expected one PATH[<TAB>LABEL] per line)")
        self._file = None
        self.classes = []
        self.skipped = SkippedCounter(f"list:{list_file}")

    def __getstate__(self):
        # workers get the file names only and reopen / re-map them
        state = dict(self.__dict__)
        state["_offsets"] = None
        state["_file"] = None
        return state

    def __len__(self) -> int:
        return self._len

    def entry(self, i: int) -> tuple[str, int]:
        """Line i -> (absolute image path, label; -1 when the line has no label)."""
        if not 0 <= i < self._len:
            raise IndexError(f"entry {i} out of range for {self._len} entries of {self.list_file}")
        if self._offsets is None:
            self._offsets = np.load(self.index_path, mmap_mode="r")
        if self._file is None:
            self._file = open(self.list_file, "rb")
        off = int(self._offsets[i])
        line = self._read_line(off).decode("utf-8").rstrip("\r\n")
        path, label = line, -1
        if "\t" in line:
            path, lab = line.rsplit("\t", 1)
            try:
                label = int(lab)
            except ValueError:
                raise ValueError(f"{self.list_file} entry {i} (byte {off}): label {lab!r} is not an integer; "
                                 "lines are PATH or PATH<TAB>LABEL") from None
        return os.path.join(self.base, path), label

    def _read_line(self, off: int) -> bytes:
        # positional reads (no shared file position): safe when threads or forked processes share the file
        fd, chunks, pos = self._file.fileno(), [], off
        while True:
            chunk = os.pread(fd, 4096, pos)
            end = chunk.find(b"\n")
            if end >= 0 or not chunk:
                chunks.append(chunk if end < 0 else chunk[:end])
                return b"".join(chunks)
            chunks.append(chunk)
            pos += len(chunk)

    def encoded(self, i: int) -> tuple[bytes, int, str]:
        """Entry i undecoded -> (file bytes, label, path); OSError if the file cannot be read."""
        path, label = self.entry(i)
        with open(path, "rb") as f:
            return f.read(), label, path

    def __getitem__(self, i: int):
        path, label = self.entry(int(i))
        try:
            img = decode_image(path)
        except Exception as e:  # missing or undecodable file
            self.skipped.skip(path, e)
            return None
        return img, label
