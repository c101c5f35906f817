"""A remote `train.output_dir` (gs://bucket/run, s3://..., any scheme etils.epath knows).

Checkpoints go there directly (Orbax writes remote paths itself) and so do the lock and the checksum
files. The other files of a run (config, `training_metrics.json`, TensorBoard events, the curves
picture, evaluation exports) are written with plain local file I/O (appends, matplotlib, TensorBoard),
which object stores do not offer; for a remote run they are written to a local mirror directory and
copied to the output dir after every checkpoint and at the end (`RemoteMirror`). A resumed run first
copies them back, so the metrics file continues where it stopped.

The mirror is `$DINOV2_STAGING_DIR/<url as a name>` (default `~/.cache/dinov2_jax/remote_runs`).
"""
from __future__ import annotations

import os
import re

CKPT_DIR = "ckpt"


def is_remote(path: str) -> bool:
    return "://" in os.fspath(path)


def _epath(path):
    from etils import epath

    return epath.Path(path)


def _walk_files(root) -> dict[str, int]:
    """{relative path: size} of the files under an epath directory ({} if it does not exist)."""
    out = {}
    if not root.exists():
        return out
    stack = [root]
    while stack:
        d = stack.pop()
        for child in d.iterdir():
            if child.is_dir():
                stack.append(child)
            else:
                st = child.stat()
                size = getattr(st, "length", None)
                out[os.path.relpath(os.fspath(child), os.fspath(root))] = st.st_size if size is None else size
    return out


class RemoteMirror:
    """Local directory mirroring the non-checkpoint files of a remote output directory."""

    def __init__(self, remote: str, local: str | None = None, skip=(CKPT_DIR,)):
        self.remote = remote.rstrip("/")
        base = os.environ.get("DINOV2_STAGING_DIR") or os.path.expanduser("~/.cache/dinov2_jax/remote_runs")
        self.local = local or os.path.join(base, re.sub(r"[^A-Za-z0-9._-]+", "_", self.remote))
        self.skip = tuple(skip)
        os.makedirs(self.local, exist_ok=True)
        self._uploaded: dict[str, tuple[int, int]] = {}  # rel path -> (size, mtime_ns) at the last upload

    def _skipped(self, rel: str) -> bool:
        top = rel.split("/", 1)[0]
        return top in self.skip or top.startswith(".")  # the lock, write probes

    def download(self) -> int:
        """Copies remote files that are missing (or of another size) locally; returns how many."""
        n = 0
        remote = _epath(self.remote)
        for rel, size in _walk_files(remote).items():
            if self._skipped(rel):
                continue
            dst = os.path.join(self.local, rel)
            if os.path.exists(dst) and os.path.getsize(dst) == size:
                continue
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            with (remote / rel).open("rb") as f, open(dst, "wb") as g:
                g.write(f.read())
            n += 1
        for rel in self._local_files():  # what is there now counts as uploaded
            self._uploaded[rel] = self._stamp(rel)
        return n

    def _local_files(self) -> list[str]:
        out = []
        for d, _, files in os.walk(self.local):
            out += [os.path.relpath(os.path.join(d, f), self.local) for f in files]
        return sorted(out)

    def _stamp(self, rel: str) -> tuple[int, int]:
        st = os.stat(os.path.join(self.local, rel))
        return st.st_size, st.st_mtime_ns

    def upload(self) -> int:
        """Copies new or changed local files to the remote directory; returns how many."""
        n = 0
        remote = _epath(self.remote)
        for rel in self._local_files():
            stamp = self._stamp(rel)
            if self._uploaded.get(rel) == stamp or self._skipped(rel):
                continue
            dst = remote / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            with open(os.path.join(self.local, rel), "rb") as f:
                dst.write_bytes(f.read())
            self._uploaded[rel] = stamp
            n += 1
        return n
