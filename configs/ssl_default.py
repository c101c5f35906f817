"""Default DINOv2 SSL config: every key of the official `ssl_default_config.yaml` that the official code reads.

Names and values follow the official file (dinov2@b8931f7). Keys that only make sense for PyTorch
FSDP are replaced by their JAX meaning (see `compute_precision`, `mesh`). The official `train.saveckp_freq`
and `train.cache_dataset` are left out: nothing reads them there either (`dinov2_jax.config.UNREAD_OFFICIAL_KEYS`). Other configs start from
`get_config()` here and override what the official train yamls override.

Usage: `python -m dinov2_jax.train --config configs/ssl_default.py --config.optim.base_lr=0.002`.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    c.MODEL = ml_collections.ConfigDict()
    # a new run (no checkpoint in train.output_dir yet) initialises student and teacher from these weights;
    # optimizer state and iteration start fresh (official: fvcore weights path)
    c.MODEL.WEIGHTS = ""

    # Official: fp16 FSDP MixedPrecision + a gradient scaler. JAX (dinov2_jax/train/precision.py):
    # params, optimizer state, EMA, centers and losses float32; forward/backward in `compute_dtype`
    # ("auto" = bfloat16 on GPU/TPU, float32 on CPU; fp16 is refused: no loss scaler).
    c.compute_precision = ml_collections.ConfigDict()
    c.compute_precision.compute_dtype = "auto"

    c.dino = ml_collections.ConfigDict()
    c.dino.loss_weight = 1.0
    c.dino.head_n_prototypes = 65536
    c.dino.head_bottleneck_dim = 256
    c.dino.head_nlayers = 3
    c.dino.head_hidden_dim = 2048
    c.dino.koleo_loss_weight = 0.1
    # DINO v1 `norm_last_layer`: the head's weight-norm gain stays frozen at 1 (DINOv2: trained)
    c.dino.head_norm_last_layer = False

    c.ibot = ml_collections.ConfigDict()
    c.ibot.loss_weight = 1.0
    c.ibot.mask_sample_probability = 0.5
    c.ibot.mask_ratio_min_max = (0.1, 0.5)
    c.ibot.separate_head = False
    c.ibot.head_n_prototypes = 65536
    c.ibot.head_bottleneck_dim = 256
    c.ibot.head_nlayers = 3
    c.ibot.head_hidden_dim = 2048

    c.train = ml_collections.ConfigDict()
    c.train.batch_size_per_gpu = 64  # per accelerator device (GPU, TPU core, or CPU device)
    # Dataset spec: "folder:/path/to/train" (ImageNet train layout or flat folder),
    # "tfds:NAME:SPLIT[:DATA_DIR]" (array_record, no TensorFlow needed), or "demo" (built in).
    c.train.dataset_path = "folder:/path/to/imagenet/train"
    c.train.output_dir = "."
    c.train.seed = 0
    c.train.num_workers = 10  # grain worker processes per host
    c.train.OFFICIAL_EPOCH_LENGTH = 1250
    c.train.centering = "centering"  # or "sinkhorn_knopp"
    # JAX trainer extras
    c.train.checkpoint_period = 3 * 1250  # official PeriodicCheckpointer period (iterations)
    c.train.max_to_keep = 3
    c.train.log_period = 10
    c.train.max_iterations = -1  # -1: epochs * OFFICIAL_EPOCH_LENGTH, else stop early (schedules unchanged)

    c.student = ml_collections.ConfigDict()
    c.student.arch = "vit_large"
    c.student.patch_size = 16
    c.student.drop_path_rate = 0.3
    c.student.layerscale = 1.0e-05
    c.student.drop_path_uniform = True
    c.student.pretrained_weights = ""  # backbone weights the student (and so the teacher) start from
    c.student.ffn_layer = "mlp"
    c.student.qkv_bias = True
    c.student.proj_bias = True
    c.student.ffn_bias = True
    c.student.num_register_tokens = 0
    c.student.interpolate_antialias = False
    c.student.interpolate_offset = 0.1
    # JAX extras
    c.student.attn_impl = "auto"  # auto | xla | cudnn | pallas  (auto: cudnn on GPU, else xla)
    c.student.remat = "none"  # none | full | dots  (activation checkpointing per block)
    # Run the blocks under lax.scan (same math and parameter tree; compile time independent of depth,
    # faster backward on XLA:CPU, see docs/benchmarks.md). False: a Python loop of blocks.
    c.student.scan_blocks = True

    c.teacher = ml_collections.ConfigDict()
    c.teacher.momentum_teacher = 0.992
    c.teacher.final_momentum_teacher = 1.0
    c.teacher.warmup_teacher_temp = 0.04
    c.teacher.teacher_temp = 0.07
    c.teacher.warmup_teacher_temp_epochs = 30
    c.teacher.teacher_temp_schedule = "per_iteration"  # or "per_epoch" (DINO v1: one value per epoch)
    # Distillation (DINOv2 recipe for S/B/L): a frozen pretrained teacher instead of the EMA.
    c.teacher.pretrained_weights = ""  # converted dir or official .pth; "" = EMA teacher
    c.teacher.arch = ""  # "" = same architecture as the student

    c.optim = ml_collections.ConfigDict()
    c.optim.epochs = 100
    c.optim.weight_decay = 0.04
    c.optim.weight_decay_end = 0.4
    c.optim.base_lr = 0.004  # learning rate for a batch size of 1024
    c.optim.lr = 0.0  # set by the scaling rule
    c.optim.warmup_epochs = 10
    c.optim.min_lr = 1.0e-06
    c.optim.clip_grad = 3.0
    c.optim.freeze_last_layer_epochs = 1
    c.optim.scaling_rule = "sqrt_wrt_1024"  # or "linear_wrt_256" (DINO v1: base_lr * batch / 256)
    c.optim.clip_grad_mode = "per_submodule"  # or "per_parameter" (DINO v1 utils.clip_gradients)
    c.optim.patch_embed_lr_mult = 0.2
    c.optim.layerwise_decay = 0.9
    c.optim.adamw_beta1 = 0.9
    c.optim.adamw_beta2 = 0.999

    c.crops = ml_collections.ConfigDict()
    c.crops.global_crops_scale = (0.32, 1.0)
    c.crops.local_crops_number = 8
    c.crops.local_crops_scale = (0.05, 0.32)
    c.crops.global_crops_size = 224
    c.crops.local_crops_size = 96
    # JAX extra: color jitter / grayscale / blur / solarize / normalise on the accelerator (the host only
    # decodes, crops and flips; uint8 crops + sampled params travel). Same draws as the host path; see
    # docs/data.md. For GPU/TPU runs whose host CPUs limit images/s.
    c.crops.photometric_on_device = False
    # Effective blur probabilities of (global crop 1, global crop 2, local crops) and the solarize probability
    # of global crop 2. Official DINOv2 passes p=1.0/0.1/0.5 to a wrapper that applies the blur with 1 - p
    # (dinov2/data/transforms.py), so the effective values are 0.0/0.9/0.5; DINO v1 applies 1.0/0.1/0.5.
    c.crops.blur_probs = (0.0, 0.9, 0.5)
    c.crops.solarize_prob = 0.2

    c.evaluation = ml_collections.ConfigDict()
    c.evaluation.eval_period_iterations = 12500  # teacher export
    # JAX extra: periodic evaluators of the teacher, name -> options (dinov2_jax/eval/evaluators.py), e.g.
    #   c.evaluation.evaluators.knn = ml_collections.ConfigDict(dict(type="knn", period=0,
    #       train_dataset="folder:/data/imagenet/train", val_dataset="folder:/data/imagenet/val"))
    c.evaluation.evaluators = ml_collections.ConfigDict()  # empty = export only

    # Device mesh (JAX): sizes of the named axes; -1 = all remaining devices.
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    # FSDP shards only arrays with at least this many elements (smaller ones stay replicated)
    c.mesh.fsdp_min_size = 2**14
    return c
