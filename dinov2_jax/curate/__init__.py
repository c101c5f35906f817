"""Data curation as DINOv2 built LVD-142M, on JAX (see docs/curation.md).

Modules: `embeddings` (float16 embedding store, resumable), `search` (exact blocked k-NN over a mesh),
`dedup` (near-duplicates: connected components, protected set), `retrieve` (neighbours of seed
images, or samples of their clusters), `kmeans` (k-means, hierarchical k-means with resampling,
balanced sampling), `report` (counts and pictures). CLI: `python -m dinov2_jax.curate <step>`.
"""
