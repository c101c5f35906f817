"""Embedding store (`dinov2_jax/curate/embeddings.py`): float16 unit rows, ids, resumable shards."""
import os

import numpy as np
import pytest

from curate_synthetic import pattern_images, write_images
from dinov2_jax.curate.embeddings import EmbeddingStore, embed_dataset


@pytest.fixture(scope="module")
def feature_fn():
    from flax import nnx

    from dinov2_jax.eval.features import make_feature_fn
    from dinov2_jax.models.vision_transformer import DinoVisionTransformer

    model = DinoVisionTransformer(img_size=28, patch_size=14, embed_dim=32, depth=1, num_heads=2, init_values=1.0,
                                  rngs=nnx.Rngs(0))
    return make_feature_fn(model)


def test_store_shards_resume_and_skip_unreadable(tmp_path, feature_fn):
    folder = tmp_path / "imgs"
    paths = write_images(str(folder), pattern_images(20, size=32))
    (folder / "img_0007.png").write_bytes(b"not an image")  # unreadable: left out, counted
    kw = dict(model_name="tiny", dim=32, shard_size=8, batch_size=4, image_size=28, progress=False)
    root = str(tmp_path / "store")
    first = embed_dataset(f"folder:{folder}", root, feature_fn, **kw)
    assert first["shards_run"] == 3 and first["images"] == 19
    store = EmbeddingStore(root)
    assert store.done and store.num_shards == 3
    v = store.vectors()
    assert v.dtype == np.float16 and v.shape == (19, 32)
    np.testing.assert_allclose(np.linalg.norm(v.astype(np.float32), axis=1), 1.0, atol=2e-3)
    np.testing.assert_array_equal(store.ids(), np.delete(np.arange(20), 7))
    assert store.row_refs([0, 7]) == [os.path.abspath(paths[0]), os.path.abspath(paths[8])]
    assert isinstance(np.load(store.shard_path(1), mmap_mode="r"), np.memmap)
    # resume: a shard without its ids file is unfinished and is the only one run again
    os.remove(store.shard_path(1, ids=True))
    os.remove(os.path.join(root, "done"))
    again = embed_dataset(f"folder:{folder}", root, feature_fn, **kw)
    assert again["shards_run"] == 1 and again["shards_skipped"] == 2
    np.testing.assert_array_equal(EmbeddingStore(root).vectors(), v)
    # same folder, other settings: refused, nothing overwritten
    with pytest.raises(ValueError, match="another run"):
        embed_dataset(f"folder:{folder}", root, feature_fn, **{**kw, "shard_size": 4})


def test_incomplete_or_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="curate embed"):
        EmbeddingStore(str(tmp_path))
    (tmp_path / "meta.json").write_text('{"format": "dinov2_jax-embeddings-v1", "num_shards": 2, "dim": 4}')
    with pytest.raises(RuntimeError, match="2 of 2 shards missing"):
        EmbeddingStore(str(tmp_path)).vectors()
