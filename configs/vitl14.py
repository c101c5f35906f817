"""ViT-L/14 from scratch: official `dinov2/configs/train/vitl14.yaml` (SwiGLU FFN, Sinkhorn-Knopp,
separate iBOT head, 500 "epochs" = 625k iterations). The official run used ImageNet-22k / LVD-142M;
set `train.dataset_path` accordingly.
"""
from dinov2_jax.config import load_sibling_module

ssl_default = load_sibling_module(__file__, "ssl_default")


def apply_vitl14(c):
    c.dino.head_n_prototypes = 131072
    c.dino.head_bottleneck_dim = 384
    c.ibot.separate_head = True
    c.ibot.head_n_prototypes = 131072
    c.train.batch_size_per_gpu = 32
    c.train.dataset_path = "folder:/path/to/imagenet22k"
    c.train.centering = "sinkhorn_knopp"
    c.student.arch = "vit_large"
    c.student.patch_size = 14
    c.student.drop_path_rate = 0.4
    c.student.ffn_layer = "swiglufused"
    c.teacher.momentum_teacher = 0.994
    c.optim.epochs = 500
    c.optim.weight_decay_end = 0.2
    c.optim.base_lr = 2.0e-04
    c.optim.warmup_epochs = 80
    c.optim.layerwise_decay = 1.0
    c.crops.local_crops_size = 98
    return c


def get_config():
    return apply_vitl14(ssl_default.get_config())
