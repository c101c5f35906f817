"""ViT-L/16 "short" recipe: official `dinov2/configs/train/vitl16_short.yaml` (the default config).

Global batch 2048 (= 32 devices x 64), 100 "epochs" of 1250 iterations, lr 0.004*sqrt(2048/1024).
Set the dataset on the command line:
`python -m dinov2_jax.train --config configs/vitl16_short.py --config.train.dataset_path=folder:/data/imagenet/train --config.train.output_dir=/ckpt/vitl16`.
"""
from dinov2_jax.config import load_sibling_module

ssl_default = load_sibling_module(__file__, "ssl_default")


def get_config():
    c = ssl_default.get_config()
    c.train.batch_size_per_gpu = 64
    return c
