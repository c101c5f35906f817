"""Quickstart: a tiny ViT trained with the full DINOv2 objective on the built-in "demo" data, on CPU.

`python -m dinov2_jax.train --config configs/quickstart.py --config.train.output_dir=/tmp/dinov2_quickstart`

Everything official is kept (DINO + iBOT + KoLeo losses, multi-crop, masking, EMA teacher,
cosine schedules, layer-wise lr decay); only the sizes are small: a 4-block, 96-dim ViT with 8-pixel
patches on 64-pixel global / 32-pixel local crops, 128 prototypes, and "epochs" of 25 iterations
(`train.OFFICIAL_EPOCH_LENGTH`) so the schedules (warmups, last-layer freeze) fit a 300-iteration run.
The teacher is evaluated with k-NN on the labelled demo data at the end (and halfway).

Five values differ from a plain scaling of the official recipe, so that the DINO terms learn within
300 iterations instead of settling at their uniform-target value (docs/recipes.md, "Quickstart: the
DINO terms"): a fast teacher (EMA momentum 0.9: the official 0.992 averages over ~125 iterations,
nothing in a 125k-iteration run but 40 % of this one), a sharp teacher (temperature 0.02, no
warm-up), Sinkhorn-Knopp instead of softmax centering (as the official ViT-L/g recipes; no center
lagging behind a fast teacher), 128 prototypes for 10 photos, and a 3x base lr.
"""
import ml_collections

from dinov2_jax.config import load_sibling_module

ssl_default = load_sibling_module(__file__, "ssl_default")


def get_config():
    c = ssl_default.get_config()
    # Tiny ViT: the "vit_small" factory with its size overridden (JAX extras read by the state builder).
    c.student.arch = "vit_small"
    c.student.embed_dim = 96
    c.student.depth = 4
    c.student.num_heads = 3
    c.student.patch_size = 8
    c.student.drop_path_rate = 0.0
    c.student.drop_path_uniform = True
    c.student.attn_impl = "xla"

    c.dino.head_n_prototypes = 128  # the iBOT terms share this head (ibot.separate_head = False)
    c.dino.head_hidden_dim = 512
    c.dino.head_bottleneck_dim = 128
    c.ibot.head_n_prototypes = 128
    c.ibot.head_hidden_dim = 512
    c.ibot.head_bottleneck_dim = 128

    c.crops.global_crops_size = 64
    c.crops.local_crops_size = 32
    c.crops.local_crops_number = 4

    c.train.dataset_path = "demo"
    c.train.output_dir = "./quickstart_output"
    c.train.batch_size_per_gpu = 32
    c.train.num_workers = 0  # the 2-core CPU machine: augment in the main process
    c.train.OFFICIAL_EPOCH_LENGTH = 25
    c.train.checkpoint_period = 100
    c.train.max_to_keep = 2
    c.train.log_period = 10

    c.optim.epochs = 12  # 300 iterations (+1, the official loop's extra final step)
    c.optim.warmup_epochs = 1
    c.optim.base_lr = 0.012  # lr = 0.012 * sqrt(32 / 1024) = 2.1e-3 on one device
    c.optim.freeze_last_layer_epochs = 1
    c.train.centering = "sinkhorn_knopp"
    c.teacher.momentum_teacher = 0.9  # cosine to 1.0 over the run, as official
    c.teacher.warmup_teacher_temp = 0.02
    c.teacher.teacher_temp = 0.02
    c.teacher.warmup_teacher_temp_epochs = 3

    c.evaluation.eval_period_iterations = 150
    # periodic evaluators of the teacher (dinov2_jax/eval/evaluators.py); period 0 = eval_period_iterations
    c.evaluation.evaluators.knn = ml_collections.ConfigDict(dict(
        type="knn", period=0,
        at_start=True,  # also k-NN the random-init model: the baseline the README compares to
        train_dataset="demo:train", val_dataset="demo:val",
        image_size=64, resize_size=64,  # the tiny model's eval image size
        max_samples=0,  # 0 = all
        nb_knn=(10, 20),
    ))
    return c
