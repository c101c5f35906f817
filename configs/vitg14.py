"""ViT-g/14 from scratch: official `dinov2/configs/train/vitg14.yaml` = vitl14 with
`student.arch: vit_giant2` and `batch_size_per_gpu: 12`.
"""
from dinov2_jax.config import load_sibling_module

ssl_default = load_sibling_module(__file__, "ssl_default")
vitl14 = load_sibling_module(__file__, "vitl14")


def get_config():
    c = vitl14.apply_vitl14(ssl_default.get_config())
    c.student.arch = "vit_giant2"
    c.train.batch_size_per_gpu = 12
    return c
