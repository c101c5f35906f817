"""DINO v1 (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers"): ViT-S/16.

`python -m dinov2_jax.train --config configs/dino_vits16.py --config.train.dataset_path=folder:/path/to/imagenet/train`

The defaults of facebookresearch/dino `main_dino.py` (its "vanilla" ViT-S/16 run) with the paper's
2 x 224^2 + 10 x 96^2 multi-crop: only the DINO self-distillation loss on the class token (no iBOT, no
KoLeo, no masking), a weight-normalised last layer whose gain stays frozen at 1 (`norm_last_layer`),
lr = 0.0005 x batch / 256, per-parameter gradient clipping at 3.0, AdamW without layer-wise decay, and
DINO v1's augmentation probabilities (blur 1.0 / 0.1 / 0.5, solarize 0.2). See docs/recipes.md for
the DINO repo's "boosted" variant (teacher temperature 0.04 -> 0.07 over 30 epochs, 300 epochs) and
what differs from the PyTorch run.
"""
from dinov2_jax.config import load_sibling_module

ssl_default = load_sibling_module(__file__, "ssl_default")


def get_config():
    c = ssl_default.get_config()

    c.student.arch = "vit_small"
    c.student.patch_size = 16
    c.student.drop_path_rate = 0.1
    c.student.drop_path_uniform = False  # DINO v1 ViT: rates linspace(0, 0.1, depth)
    c.student.layerscale = None  # no LayerScale in the DINO v1 ViT

    c.dino.loss_weight = 1.0
    c.dino.head_n_prototypes = 65536  # --out_dim
    c.dino.head_bottleneck_dim = 256
    c.dino.head_nlayers = 3
    c.dino.head_hidden_dim = 2048
    c.dino.head_norm_last_layer = True  # --norm_last_layer true
    c.dino.koleo_loss_weight = 0.0
    c.ibot.loss_weight = 0.0
    c.ibot.mask_sample_probability = 0.0  # no masked global crops (DINOv2 masks them even without iBOT)

    c.train.batch_size_per_gpu = 64  # x 8 GPUs = 512 in the published run
    # DINO v1 epochs are passes over ImageNet-1k: 1281167 // 512 iterations at 8 x 64 images.
    # Set it to 1281167 // (global batch) for another batch size.
    c.train.OFFICIAL_EPOCH_LENGTH = 2502
    c.train.checkpoint_period = 2502
    c.train.centering = "centering"  # center momentum 0.9, student temperature 0.1 (DINOLoss defaults)

    c.teacher.momentum_teacher = 0.996  # -> 1.0 with a cosine
    c.teacher.final_momentum_teacher = 1.0
    c.teacher.warmup_teacher_temp = 0.04
    c.teacher.teacher_temp = 0.04  # boosted recipe: 0.07 with warmup_teacher_temp_epochs=30
    c.teacher.warmup_teacher_temp_epochs = 0
    c.teacher.teacher_temp_schedule = "per_epoch"  # DINOLoss indexes its schedule by epoch

    c.optim.epochs = 100
    c.optim.weight_decay = 0.04
    c.optim.weight_decay_end = 0.4
    c.optim.base_lr = 0.0005
    c.optim.scaling_rule = "linear_wrt_256"  # lr = 0.0005 * 512 / 256 = 0.001 on 8 x 64
    c.optim.warmup_epochs = 10
    c.optim.min_lr = 1.0e-06
    c.optim.clip_grad = 3.0
    c.optim.clip_grad_mode = "per_parameter"
    c.optim.freeze_last_layer_epochs = 1
    c.optim.layerwise_decay = 1.0
    c.optim.patch_embed_lr_mult = 1.0

    c.crops.global_crops_scale = (0.4, 1.0)
    c.crops.local_crops_scale = (0.05, 0.4)
    c.crops.local_crops_number = 10  # main_dino.py default: 8; the paper's ViT-S/16 multi-crop: 10
    c.crops.global_crops_size = 224
    c.crops.local_crops_size = 96
    c.crops.blur_probs = (1.0, 0.1, 0.5)
    c.crops.solarize_prob = 0.2

    c.evaluation.eval_period_iterations = 10 * 2502
    return c
