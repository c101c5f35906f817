"""Run with 8 simulated devices (see tests/curate/test_search.py): k-NN and k-means on a mesh of 8, compared
with faiss and with one device. Prints one JSON line."""
import json

import faiss
import jax
import numpy as np

from curate_synthetic import skewed_clusters, unit
from dinov2_jax.curate.kmeans import kmeans, put_points
from dinov2_jax.curate.search import knn, largest_buffer_elements, put_database, search_hlo_shapes
from dinov2_jax.parallel.mesh import make_mesh

rng = np.random.default_rng(0)
x = unit(rng.normal(size=(2003, 32)))
q = unit(rng.normal(size=(150, 32)))
mesh8 = make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
mesh1 = make_mesh(None, devices=jax.devices()[:1])
db = put_database(x, mesh8, db_block=64)
s8, i8 = knn(q, db, 7, query_block=64)
s1, i1 = knn(q, x, 7, mesh=mesh1, query_block=64, db_block=64)
index = faiss.IndexFlatIP(32)
index.add(x)
_, fi = index.search(q, 7)
hlo, _ = search_hlo_shapes(db, 7, 64)
per_dev = {s.device: s.data.nbytes for s in db.vectors.addressable_shards}
pts, _ = skewed_clusters([300, 200, 100, 50], dim=16)
init = pts[:: len(pts) // 10][:10]
k8 = kmeans(pts, 10, iters=10, init_centroids_=init, mesh=mesh8, block=32)
k1 = kmeans(pts, 10, iters=10, init_centroids_=init, mesh=mesh1, block=32)
pp = put_points(pts, mesh8, block=32)
print(json.dumps({
    "devices": len(jax.devices()),
    "knn_equal_faiss": bool(np.array_equal(i8, fi)),
    "knn_equal_one_device": bool(np.array_equal(i8, i1)),
    "largest_buffer": largest_buffer_elements(hlo),
    "db_elements": int(db.vectors.shape[0] * db.vectors.shape[1]),
    "db_bytes_per_device": int(min(per_dev.values())),
    "db_bytes_total": int(db.vectors.nbytes),
    "kmeans_objective": k8.objective,
    "kmeans_objective_one_device": k1.objective,
    "kmeans_assign_equal": bool(np.array_equal(k8.assign, k1.assign)),
}))
