"""Exact blocked nearest-neighbour search (inner product = cosine on unit rows) over a device mesh.

The database rows are split over every device of the mesh (all its axes flattened). For one block of
queries (replicated on every device) each device scans its own rows in blocks of `db_block`, keeping a
running top-k ([Q, k] sims and global row ids), then the per-device top-k lists are all-gathered and
merged by a second top-k. Memory per device is O(Q_block * (db_block + k) + its share of the database):
no [N, N] (or [Q, N]) similarity matrix is ever built. The queries are fed block by block from the host
(`knn`), so the query set can be a memory-mapped file.

Products use `Precision.HIGHEST` (float32 on GPU/TPU too, no TF32/bf16 passes), so the neighbours are
those of an exact float32 search (faiss IndexFlatIP computes the same products).
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def default_mesh(mesh: Mesh | None = None) -> Mesh:
    """The given mesh, or every device on 'data' (`dinov2_jax.parallel.mesh.make_mesh`)."""
    if mesh is not None:
        return mesh
    from dinov2_jax.parallel.mesh import make_mesh

    return make_mesh(None)


def put_rows(array: np.ndarray, mesh: Mesh, rows: int, *, dtype=None, replicate: bool = False) -> jax.Array:
    """Host array [n, ...] -> global array [rows, ...] (zero padded), split by rows over every mesh axis
    (or replicated). Built from a callback, so each process only reads the rows its devices hold and a
    memory-mapped `array` is never loaded whole."""
    n = array.shape[0]
    if rows < n:
        raise ValueError(f"cannot pad {n} rows into {rows}")
    dtype = np.dtype(dtype or array.dtype)
    shape = (rows,) + tuple(array.shape[1:])
    spec = P() if replicate else P(tuple(mesh.axis_names))
    sharding = NamedSharding(mesh, spec)

    def piece(index):
        sl = index[0]
        lo, hi = sl.start or 0, rows if sl.stop is None else sl.stop
        out = np.zeros((hi - lo,) + shape[1:], dtype)
        if lo < n:
            out[: min(hi, n) - lo] = np.asarray(array[lo:min(hi, n)], dtype)
        return out

    return jax.make_array_from_callback(shape, sharding, piece)


def to_host(x: jax.Array) -> np.ndarray:
    """A replicated global array -> numpy (works in multi-process jobs, where it is not fully addressable)."""
    return np.asarray(x.addressable_data(0))


class Database(NamedTuple):
    """Database rows on the mesh: `vectors` [S * per_shard, D] split by rows; `size` real rows."""
    vectors: jax.Array
    size: int
    per_shard: int
    db_block: int
    mesh: Mesh


def put_database(vectors: np.ndarray, mesh: Mesh | None = None, *, db_block: int = 4096,
                 dtype=None) -> Database:
    """Unit rows [N, D] (numpy or memmap) -> Database split over the mesh. Each device holds ceil(N / S)
    rows rounded up to whole blocks (padding rows are masked in the search). dtype: kept as given for
    float16 (the store's: half the device memory; products are still float32), else float32."""
    if dtype is None:
        dtype = np.float16 if vectors.dtype == np.float16 else np.float32
    mesh = default_mesh(mesh)
    n = int(vectors.shape[0])
    if vectors.ndim != 2 or n == 0:
        raise ValueError(f"database must be [N, D] with N > 0, got shape {vectors.shape}")
    shards = mesh.size
    per = -(-n // shards)
    block = max(1, min(db_block, per))
    per = -(-per // block) * block
    arr = put_rows(vectors, mesh, per * shards, dtype=dtype)
    return Database(arr, n, per, block, mesh)


def _merge_topk(best_s, best_i, sims, ids, k):
    """Running top-k merge: (best [Q, k], new [Q, C]) -> best [Q, k] of the union."""
    all_s = jnp.concatenate([best_s, sims], axis=1)
    all_i = jnp.concatenate([best_i, jnp.broadcast_to(ids, sims.shape)], axis=1)
    top, pos = jax.lax.top_k(all_s, k)
    return top, jnp.take_along_axis(all_i, pos, axis=1)


@functools.lru_cache(maxsize=32)
def _search_fn(mesh: Mesh, k: int, per: int, block: int, size: int):
    """Compiled `(queries [Q, D] replicated, database) -> (sims [Q, k], ids [Q, k])`, both replicated."""
    axes = tuple(mesh.axis_names)

    def local(q, db):
        shard = jax.lax.axis_index(axes)
        blocks = db.reshape(per // block, block, db.shape[-1])
        q = q.astype(jnp.float32)

        def step(carry, xs):
            b, rows = xs
            ids = shard * per + b * block + jnp.arange(block, dtype=jnp.int32)
            sims = jnp.matmul(q, rows.astype(jnp.float32).T, precision=jax.lax.Precision.HIGHEST)
            sims = jnp.where(ids[None, :] < size, sims, -jnp.inf)  # padding rows never win
            return _merge_topk(*carry, sims, ids[None, :], k), None

        init = (jnp.full((q.shape[0], k), -jnp.inf, jnp.float32), jnp.full((q.shape[0], k), -1, jnp.int32))
        (s, i), _ = jax.lax.scan(step, init, (jnp.arange(per // block), blocks))
        # second top-k over every device's list: [S, Q, k] -> [Q, S * k] -> [Q, k]
        s_all = jax.lax.all_gather(s, axes, tiled=False)
        i_all = jax.lax.all_gather(i, axes, tiled=False)
        s_all = jnp.moveaxis(s_all, 0, 1).reshape(q.shape[0], -1)
        i_all = jnp.moveaxis(i_all, 0, 1).reshape(q.shape[0], -1)
        top, pos = jax.lax.top_k(s_all, k)
        return top, jnp.take_along_axis(i_all, pos, axis=1)

    fn = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(axes)), out_specs=(P(), P()), check_vma=False)
    return jax.jit(fn)


def search_block(queries: jax.Array, db: Database, k: int):
    """One block of queries (a replicated global array [Q, D]) -> (sims [Q, k], ids [Q, k]) replicated
    global arrays, sorted by decreasing similarity; ids are database rows."""
    return _search_fn(db.mesh, k, db.per_shard, db.db_block, db.size)(queries, db.vectors)


def knn(queries: np.ndarray, database, k: int, *, mesh: Mesh | None = None, query_block: int = 1024,
        db_block: int = 4096, progress: bool = False, desc: str = "search"):
    """Exact k nearest neighbours by inner product (cosine for unit rows).

    queries [Q, D] (numpy or memmap); database: [N, D] array or a `Database`. Returns numpy
    (sims [Q, k] float32, ids [Q, k] int64), each row sorted by decreasing similarity; ties keep the
    lower database row first. Queries are sent in blocks of `query_block` (the last one zero padded, so
    one program serves every block).
    """
    db = database if isinstance(database, Database) else put_database(database, mesh, db_block=db_block)
    if not 1 <= k <= db.size:
        raise ValueError(f"k={k} must be in [1, database size {db.size}]")
    nq = int(queries.shape[0])
    if queries.ndim != 2 or queries.shape[1] != db.vectors.shape[1]:
        raise ValueError(f"queries {queries.shape} must be [Q, {db.vectors.shape[1]}] like the database")
    sims = np.empty((nq, k), np.float32)
    ids = np.empty((nq, k), np.int64)
    qb = max(1, min(query_block, nq))
    from tqdm.auto import tqdm

    for lo in tqdm(range(0, nq, qb), desc=desc, disable=not progress):
        hi = min(lo + qb, nq)
        q = put_rows(queries[lo:hi], db.mesh, qb, dtype=np.float32, replicate=True)
        s, i = search_block(q, db, k)
        sims[lo:hi], ids[lo:hi] = to_host(s)[: hi - lo], to_host(i)[: hi - lo]
    return sims, ids


def search_hlo_shapes(db: Database, k: int, query_block: int) -> tuple[str, object]:
    """(compiled HLO text, memory analysis) of the search program for one query block: to check that no
    buffer holds a [N, N] or [Q, N] similarity matrix."""
    q = jax.ShapeDtypeStruct((query_block, db.vectors.shape[1]), jnp.float32,
                             sharding=NamedSharding(db.mesh, P()))
    compiled = _search_fn(db.mesh, k, db.per_shard, db.db_block, db.size).lower(q, db.vectors).compile()
    return compiled.as_text(), compiled.memory_analysis()


def largest_buffer_elements(hlo_text: str) -> int:
    """Largest element count of any array shape written in an HLO text (e.g. f32[256,4096] -> 1048576)."""
    import re

    best = 0
    for dims in re.findall(r"[a-z]+\d*\[([\d,]+)\]", hlo_text):
        best = max(best, math.prod(int(d) for d in dims.split(",") if d))
    return best


def knn_resumable(folder: str, name: str, queries: np.ndarray, database, k: int, *, part_size: int = 262144,
                  write: bool = True, **kw):
    """`knn` in parts of `part_size` queries, each part saved as FOLDER/NAME_part_00000.npz (atomic rename)
    and loaded instead of searched when it exists, so an interrupted search resumes. `write`: whether
    this process writes the parts (process 0); every process takes part in every search."""
    import os

    from dinov2_jax.curate.embeddings import atomic_write

    os.makedirs(folder, exist_ok=True)
    mesh, db_block = kw.pop("mesh", None), kw.pop("db_block", 4096)
    db = database if isinstance(database, Database) else put_database(database, mesh, db_block=db_block)
    nq = int(queries.shape[0])
    sims, ids = [], []
    for p, lo in enumerate(range(0, nq, part_size)):
        path = os.path.join(folder, f"{name}_part_{p:05d}.npz")
        if os.path.isfile(path):
            with np.load(path) as z:
                if z["ids"].shape == (min(lo + part_size, nq) - lo, k):
                    sims.append(z["sims"])
                    ids.append(z["ids"])
                    continue
        s, i = knn(queries[lo:lo + part_size], db, k, **kw)
        if write:
            atomic_write(path, functools.partial(_save_pair, sims=s, ids=i))
        sims.append(s)
        ids.append(i)
    return np.concatenate(sims), np.concatenate(ids)


def _save_pair(tmp: str, **arrays) -> None:
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
