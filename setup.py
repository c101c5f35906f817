from setuptools import find_packages, setup

setup(
    name="dinov2_jax",
    version="0.1.0",
    description="JAX/Flax port of DINOv2 self-supervised vision training",
    license="Apache-2.0",
    packages=find_packages(include=["dinov2_jax", "dinov2_jax.*"]),
    package_data={"dinov2_jax.models.heads": ["*.txt"]},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.7",
        "flax>=0.12",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "grain>=0.2.10",
        "ml-collections>=1.0",
        "tensorflow-datasets>=4.9",
        "einops",
        "numpy",
        "pillow",
        "tqdm",
        "tensorboardX",
        "matplotlib",
        "scikit-image",
        "scipy",
        "absl-py",
        "safetensors>=0.4",  # Hugging Face folders (dinov2_jax.pretrained), read / written without torch
        "ml-dtypes",  # bfloat16 tensors of .pth files (comes with jax)
        "etils[epath]",  # paths with remote schemes (gs://, s3://) for train.output_dir, as Orbax uses
    ],
    extras_require={
        # torch only for parity tests (and legacy non-zip .pth files); pinned to the CPU wheel our machines carry.
        "torch": ["torch==2.13.0"],
        # downloads of Hugging Face repo ids in from_pretrained("facebook/dinov2-small")
        "hf": ["huggingface_hub"],
        "test": ["torch==2.13.0", "timm==1.0.31", "transformers>=4.48", "pytest", "pytest-xdist", "fsspec",
                 "scikit-learn", "faiss-cpu"],  # faiss: reference for the curation k-NN and k-means tests
    },
)
