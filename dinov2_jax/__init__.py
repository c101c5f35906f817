"""dinov2_jax: DINOv2 in JAX / Flax NNX. `from dinov2_jax import from_pretrained` loads any DINOv2 backbone
(see dinov2_jax/pretrained.py); submodules are imported lazily so `import dinov2_jax` stays cheap."""


def __getattr__(name):
    if name in ("from_pretrained", "Pretrained"):
        from dinov2_jax import pretrained

        return getattr(pretrained, name)
    raise AttributeError(f"module 'dinov2_jax' has no attribute {name!r}")
