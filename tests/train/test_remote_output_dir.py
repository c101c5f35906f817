"""`train.output_dir` with a remote scheme keeps it (no os.path.abspath) and goes through etils.epath.

Offline stand-in for gs://: the `memory://` scheme, registered with epath for these tests only
(fsspec's in-memory file system). Orbax's own remote writing (TensorStore's gcs/s3 drivers) cannot run
offline, so the end-to-end test maps the checkpoint directory alone to a local folder.
"""
import io
import json
import os

import pytest
from test_trainer import toy_cfg, toy_components

from dinov2_jax.train import checkpoint as checkpoint_lib
from dinov2_jax.train import trainer
from dinov2_jax.train.remote_dir import RemoteMirror
from dinov2_jax.train.run_checks import OutputDirInUseError, RunLock


@pytest.fixture
def memory_scheme(monkeypatch, tmp_path):
    import fsspec
    from etils import epath
    from etils.epath import backend, gpath, register

    monkeypatch.setattr(gpath, "_URI_SCHEMES", gpath._URI_SCHEMES | {"memory"})
    monkeypatch.setattr(gpath, "_URI_PREFIXES", gpath._URI_PREFIXES + ("memory://",))
    monkeypatch.setitem(gpath._URI_MAP_ROOT, "memory://", "/memory/")
    monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, "memory", backend.fsspec_backend)
    monkeypatch.setitem(register._URI_PREFIXES_TO_CLS, "memory://", gpath.PosixGPath)
    memory = fsspec.filesystem("memory")
    local_fs = backend._FileSystemSpecBackend.fs
    monkeypatch.setattr(backend._FileSystemSpecBackend, "fs",
                        lambda self, path: memory if os.fspath(path).startswith("memory://") else local_fs(self, path))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # a URL mistaken for a local path would show up here
    yield epath.Path
    assert os.listdir(cwd) == [], "something wrote the memory:// URL as a local path"
    for key in list(memory.store):
        memory.store.pop(key, None)
    memory.pseudo_dirs[:] = [""]


def _in_memory_fs(url):
    import fsspec

    return fsspec.filesystem("memory").exists(url)


def test_output_dir_keeps_remote_scheme(memory_scheme):
    url = "memory://bucket/run1"
    assert trainer.check_output_dir(url) == url  # not /cwd/memory:/bucket/run1
    assert memory_scheme(url).is_dir() and _in_memory_fs(url)
    assert checkpoint_lib.as_path_string(url) == url


def test_lock_and_checksums_on_remote_dir(memory_scheme):
    url = "memory://bucket/run2"
    memory_scheme(url).mkdir(parents=True)
    lock = RunLock(url, warn=print).acquire()
    assert json.loads((memory_scheme(url) / ".dinov2_run.lock").read_text())["pid"] == os.getpid()
    other = RunLock(url, warn=print)
    other.me = {"host": "another-host", "pid": 1}
    with pytest.raises(OutputDirInUseError, match="in use by another run"):
        other.acquire()
    lock.release()
    assert not (memory_scheme(url) / ".dinov2_run.lock").exists()
    step = memory_scheme(url) / "ckpt" / "5"
    (step / "state").mkdir(parents=True)
    (step / "state" / "blob").write_bytes(b"\x00" * 100)
    checkpoint_lib.write_checksums(f"{url}/ckpt/5")
    assert checkpoint_lib.verify_checksums(f"{url}/ckpt/5") is None
    (step / "state" / "blob").write_bytes(b"\x00" * 50)
    assert "truncated" in checkpoint_lib.verify_checksums(f"{url}/ckpt/5")


def test_mirror_uploads_changed_files_and_downloads_on_resume(memory_scheme, tmp_path):
    url = "memory://bucket/run3"
    m = RemoteMirror(url, local=str(tmp_path / "a"))
    (tmp_path / "a" / "eval").mkdir()
    (tmp_path / "a" / "training_metrics.json").write_text('{"iteration": 0}\n')
    (tmp_path / "a" / "eval" / "x.json").write_text("{}")
    assert m.upload() == 2 and m.upload() == 0  # unchanged files are not copied again
    with open(tmp_path / "a" / "training_metrics.json", "a") as f:
        f.write('{"iteration": 1}\n')
    assert m.upload() == 1
    memory_scheme(url + "/ckpt/7").mkdir(parents=True)
    (memory_scheme(url) / "ckpt" / "7" / "big").write_bytes(b"1")
    again = RemoteMirror(url, local=str(tmp_path / "b"))
    assert _in_memory_fs(f"{url}/eval/x.json")
    assert again.download() == 2  # not the checkpoint
    assert (tmp_path / "b" / "training_metrics.json").read_text() == '{"iteration": 0}\n{"iteration": 1}\n'
    assert not (tmp_path / "b" / "ckpt").exists()


def test_trainer_with_remote_output_dir(memory_scheme, tmp_path, monkeypatch):
    """The toy run in memory://: config, metrics, curves and lock end up in the remote dir; a second
    call resumes and the metrics file continues. Checkpoints: Orbax on a local folder (see module doc)."""
    url = "memory://bucket/run4"
    local_ckpt = tmp_path / "ckpt"

    class LocalCkpt(checkpoint_lib.Checkpointer):
        def __init__(self, directory, **kw):
            assert directory == f"{url}/ckpt"  # the trainer kept the scheme
            super().__init__(str(local_ckpt), **kw)

    monkeypatch.setattr(trainer, "Checkpointer", LocalCkpt)
    monkeypatch.setenv("DINOV2_STAGING_DIR", str(tmp_path / "staging"))
    log = io.StringIO()
    trainer.train(toy_cfg(url, **{"train.max_iterations": 5}), toy_components(), use_mesh=False, stream=log)
    assert "is remote" in log.getvalue()
    remote = memory_scheme(url)
    for name in ("config.json", "config.yaml", "training_metrics.json", "training_curves.png"):
        assert (remote / name).exists() and _in_memory_fs(f"{url}/{name}"), name
    assert not (remote / ".dinov2_run.lock").exists()
    import shutil

    shutil.rmtree(tmp_path / "staging")  # e.g. resumed on another machine
    res = trainer.train(toy_cfg(url, **{"train.max_iterations": 8}), toy_components(), use_mesh=False,
                        stream=io.StringIO())
    assert res.start_iteration == 5
    its = [json.loads(line)["iteration"] for line in (remote / "training_metrics.json").read_text().splitlines()]
    assert its == [0, 1, 3, 4, 5, 7]
