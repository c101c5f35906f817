from setuptools import find_packages, setup

setup(
    name="dinov2_jax",
    version="0.1.0",
    description="JAX/Flax port of DINOv2 self-supervised vision training",
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
    ],
    extras_require={
        # torch only for weight conversion and parity tests; pinned to the CPU wheel our machines carry.
        "torch": ["torch==2.13.0"],
        "test": ["torch==2.13.0", "timm==1.0.31", "pytest", "pytest-xdist"],
    },
)
