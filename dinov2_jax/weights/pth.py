"""Read and write PyTorch `.pth` files (the zip + pickle format of `torch.save`) without torch.

Reading uses a restricted unpickler: only the few globals a tensor checkpoint needs are resolved
(`torch._utils._rebuild_tensor_v2` / `_rebuild_parameter`, `torch.*Storage`, `collections.OrderedDict`,
torch dtypes and sizes); anything else (e.g. `os.system`, arbitrary classes) is refused, as
`torch.load(weights_only=True)`. Tensors come back as numpy arrays with the torch dtype (bfloat16 as
`ml_dtypes.bfloat16`), copied from the archive bytes with the stored offset / shape / strides, so the
values equal what torch reads, bit for bit. Files in torch's legacy (pre-1.6, non-zip) format are read
with `torch.load(weights_only=True)` when torch is installed; without torch they are refused with the
reason.

Writing emits the same format (protocol-2 pickle of `_rebuild_tensor_v2` calls + one zip record per
tensor), which `torch.load(..., weights_only=True)` reads; torch is not needed.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import sys
import zipfile
from typing import Any, Mapping

import numpy as np


class WeightsFileError(ValueError):
    """A weights file cannot be read (not a checkpoint, truncated, or holding forbidden objects)."""


def _bf16():
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


# torch storage class name -> numpy dtype (as the element type of the stored bytes)
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_TORCH_DTYPES = {"float32": np.float32, "float": np.float32, "float64": np.float64, "double": np.float64,
                 "float16": np.float16, "half": np.float16, "bfloat16": "bfloat16", "int64": np.int64,
                 "long": np.int64, "int32": np.int32, "int": np.int32, "int16": np.int16, "int8": np.int8,
                 "uint8": np.uint8, "bool": np.bool_}


def _np_dtype(d) -> np.dtype:
    return _bf16() if d == "bfloat16" else np.dtype(d)


class _StorageType:
    """Stand-in for `torch.FloatStorage` & co. during unpickling."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _np_dtype(_STORAGE_DTYPES[name])


class _Dtype:
    def __init__(self, name: str):
        self.name = name


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    """numpy array = the torch tensor view (offset / size / stride in elements) of the storage, copied."""
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    n = storage.size
    if size and any(s == 0 for s in size):
        return np.zeros(size, storage.dtype)
    last = storage_offset + sum((s - 1) * st for s, st in zip(size, stride))
    if storage_offset < 0 or last >= n or any(st < 0 for st in stride):
        raise WeightsFileError(f"tensor view (offset {storage_offset}, size {size}, stride {stride}) lies outside "
                               f"its storage of {n} elements: the file is corrupt")
    item = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(storage[storage_offset:], shape=size,
                                           strides=tuple(st * item for st in stride), writeable=False)
    return np.array(view, copy=True, order="C")


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *state):
    return data


def _torch_size(*args):
    return tuple(*args) if args else ()


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): _torch_size,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, records: Mapping[str, bytes], path: str):
        super().__init__(io.BytesIO(data))
        self._records = records
        self._path = path
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "torch" and name in _TORCH_DTYPES:
            return _Dtype(name)
        raise WeightsFileError(f"{self._path}: refusing to load {module}.{name} (only tensors, dicts, lists and "
                               "numbers are read from a weights file)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise WeightsFileError(f"{self._path}: unsupported persistent id {pid!r:.80}")
        _, stype, key, _location, numel = pid
        if isinstance(stype, _Dtype):  # torch.UntypedStorage-era spelling: the dtype itself
            dtype = _np_dtype(_TORCH_DTYPES[stype.name])
        elif isinstance(stype, _StorageType):
            dtype = stype.dtype
        else:
            raise WeightsFileError(f"{self._path}: unsupported storage type {stype!r:.80}")
        key = str(key)
        if key not in self._storages:
            if key not in self._records:
                raise WeightsFileError(f"{self._path}: tensor data record {key!r} is missing: the file is truncated "
                                       "or corrupt (download it again)")
            raw = self._records[key]
            if len(raw) < numel * dtype.itemsize:
                raise WeightsFileError(f"{self._path}: tensor data record {key!r} has {len(raw)} bytes, expected "
                                       f"{numel * dtype.itemsize}: the file is truncated (download it again)")
            self._storages[key] = np.frombuffer(raw, dtype=dtype, count=numel)
        return self._storages[key]


class _LazyRecords(Mapping):
    """The `data/<key>` records of the archive, read on first access."""

    def __init__(self, zf: zipfile.ZipFile, prefix: str, byteorder: str):
        self._zf, self._prefix, self._swap = zf, prefix, byteorder != sys.byteorder
        self._names = {n[len(prefix) + 5:]: n for n in zf.namelist() if n.startswith(prefix + "data/")}

    def __getitem__(self, key):
        raw = self._zf.read(self._names[key])
        if self._swap:
            raise WeightsFileError(f"checkpoint written on a {('big' if sys.byteorder == 'little' else 'little')}"
                                   "-endian machine: not supported")
        return raw

    def __contains__(self, key):  # Mapping's default would read the record
        return key in self._names

    def __iter__(self):
        return iter(self._names)

    def __len__(self):
        return len(self._names)


def read_pth(path: str) -> Any:
    """Load a `.pth` like `torch.load(path, map_location="cpu", weights_only=True)`, tensors as numpy.

    Raises WeightsFileError with one clear line for a missing, truncated, non-checkpoint or unsafe file.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path!r} not found")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            if f.read(4) == b"PK\x03\x04":  # starts as a zip archive but has no central directory
                raise WeightsFileError(f"{path}: truncated zip archive (the end of the file is missing); "
                                       "download the file again")
        return _read_legacy(path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
            if len(pkl) != 1:
                raise WeightsFileError(f"{path}: a zip file but not a torch checkpoint (no <name>/data.pkl record)")
            prefix = pkl[0][: -len("data.pkl")]
            byteorder = "little"
            if prefix + "byteorder" in names:
                byteorder = zf.read(prefix + "byteorder").decode().strip()
            records = _LazyRecords(zf, prefix, byteorder)
            try:
                return _RestrictedUnpickler(zf.read(pkl[0]), records, path).load()
            except WeightsFileError:
                raise
            except (pickle.UnpicklingError, EOFError, KeyError, IndexError, TypeError, ValueError,
                    AttributeError, struct.error) as e:
                raise WeightsFileError(f"{path}: unreadable torch checkpoint ({type(e).__name__}: {e}); the file is "
                                       "corrupt or not a checkpoint") from None
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise WeightsFileError(f"{path}: truncated or corrupt zip archive ({e}); download the file again") from None


def _read_legacy(path: str):
    with open(path, "rb") as f:
        head = f.read(2)
    if not head or head[0] != 0x80:  # every torch pickle starts with the PROTO opcode
        raise WeightsFileError(f"{path}: not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle); "
                               "give an official .pth, a Hugging Face folder or a dinov2_jax directory")
    try:
        import torch
    except ImportError:
        raise WeightsFileError(f"{path}: legacy (pre-1.6, non-zip) torch format, which needs torch to read; install "
                               "torch or re-save the file with a recent torch.save") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files; report one line
        raise WeightsFileError(f"{path}: unreadable legacy torch checkpoint ({type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''})") from None
    return _tensors_to_numpy(obj)


def _tensors_to_numpy(obj):
    if hasattr(obj, "detach") and hasattr(obj, "dtype"):
        t = obj.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            return t.view(__import__("torch").int16).numpy().view(_bf16())
        return t.numpy().copy()
    if isinstance(obj, Mapping):
        return type(obj)((k, _tensors_to_numpy(v)) for k, v in obj.items()) if isinstance(obj, collections.OrderedDict) \
            else {k: _tensors_to_numpy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_tensors_to_numpy(v) for v in obj)
    return obj


# ---------------------------------------------------------------------------------------------------
# writing
_NP_TO_STORAGE = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
                  np.dtype(np.float16): "HalfStorage", np.dtype(np.int64): "LongStorage",
                  np.dtype(np.int32): "IntStorage", np.dtype(np.int16): "ShortStorage",
                  np.dtype(np.int8): "CharStorage", np.dtype(np.uint8): "ByteStorage",
                  np.dtype(np.bool_): "BoolStorage"}


class _Emitter:
    """Protocol-2 pickle opcodes for dicts / lists / numbers / strings and tensors (as torch.save writes)."""

    def __init__(self):
        self.out = io.BytesIO()
        self.storages: list[bytes] = []

    def w(self, b: bytes):
        self.out.write(b)

    def global_(self, module: str, name: str):
        self.w(b"c" + module.encode() + b"\n" + name.encode() + b"\n")

    def str_(self, s: str):
        b = s.encode("utf-8")
        self.w(b"X" + struct.pack("<I", len(b)) + b)

    def int_(self, i: int):
        if 0 <= i < 256:
            self.w(b"K" + struct.pack("<B", i))
        elif -(2 ** 31) <= i < 2 ** 31:
            self.w(b"J" + struct.pack("<i", i))
        else:
            b = i.to_bytes((i.bit_length() + 8) // 8, "little", signed=True)
            self.w(b"\x8a" + struct.pack("<B", len(b)) + b)

    def tuple_(self, items):
        self.w(b"(")
        for it in items:
            self.obj(it)
        self.w(b"t")

    def tensor(self, a: np.ndarray):
        a = np.array(a, order="C", copy=False) if a.flags.c_contiguous else np.array(a, order="C")
        if a.dtype == _bf16():
            storage = "BFloat16Storage"
        elif a.dtype in _NP_TO_STORAGE:
            storage = _NP_TO_STORAGE[a.dtype]
        else:
            raise TypeError(f"cannot write numpy dtype {a.dtype} to a .pth")
        key = str(len(self.storages))
        self.storages.append(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
        self.global_("torch._utils", "_rebuild_tensor_v2")
        self.w(b"(")
        self.w(b"(")  # persistent id ('storage', storage_type, key, location, numel)
        self.str_("storage")
        self.global_("torch", storage)
        self.str_(key)
        self.str_("cpu")
        self.int_(int(a.size))
        self.w(b"tQ")
        self.int_(0)
        strides, acc = [], 1
        for s in reversed(a.shape):
            strides.append(acc)
            acc *= s
        self.tuple_(tuple(int(s) for s in a.shape))
        self.tuple_(tuple(reversed(strides)))
        self.w(b"\x89")  # requires_grad False
        self.global_("collections", "OrderedDict")
        self.w(b")R")  # empty backward hooks
        self.w(b"tR")

    def obj(self, x):
        if isinstance(x, np.ndarray) or (hasattr(x, "shape") and hasattr(x, "dtype") and not isinstance(x, np.generic)):
            self.tensor(np.asarray(x))
        elif isinstance(x, bool):
            self.w(b"\x88" if x else b"\x89")
        elif isinstance(x, (int, np.integer)):
            self.int_(int(x))
        elif isinstance(x, (float, np.floating)):
            self.w(b"G" + struct.pack(">d", float(x)))
        elif isinstance(x, str):
            self.str_(x)
        elif x is None:
            self.w(b"N")
        elif isinstance(x, Mapping):
            if isinstance(x, collections.OrderedDict):
                self.global_("collections", "OrderedDict")
                self.w(b")R")
            else:
                self.w(b"}")
            if x:
                self.w(b"(")
                for k, v in x.items():
                    self.obj(k)
                    self.obj(v)
                self.w(b"u")
        elif isinstance(x, list):
            self.w(b"]")
            if x:
                self.w(b"(")
                for v in x:
                    self.obj(v)
                self.w(b"e")
        elif isinstance(x, tuple):
            self.tuple_(x)
        else:
            raise TypeError(f"cannot write a {type(x).__name__} to a .pth")


def write_pth(obj: Any, path: str, *, overwrite: bool = False) -> str:
    """Write `obj` (nested dicts / lists of numpy arrays and plain values) as a torch zip checkpoint.

    `torch.load(path, weights_only=True)` returns the same structure with torch tensors. Refuses an existing
    file unless `overwrite`."""
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    em = _Emitter()
    em.w(b"\x80\x02")
    em.obj(obj)
    em.w(b".")
    prefix = os.path.splitext(os.path.basename(path))[0] or "archive"
    prefix = "".join(c if c.isalnum() or c in "_-" else "_" for c in prefix) + "/"
    tmp = path + ".tmp"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(prefix + "data.pkl", em.out.getvalue())
        zf.writestr(prefix + "byteorder", "little")
        for i, raw in enumerate(em.storages):
            zf.writestr(f"{prefix}data/{i}", raw)
        zf.writestr(prefix + "version", "3\n")
    os.replace(tmp, path)
    return path
