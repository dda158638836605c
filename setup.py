"""act-jax: Adversarial Concurrent Training in JAX/Flax."""

import pathlib

import setuptools

# What TFDS needs at run time: etils' epath extra no longer pulls in importlib_resources,
# which TFDS imports to find a dataset's code (etils 1.15).
TFDS_EXTRA = ["tensorflow-cpu>=2.16", "tensorflow-datasets>=4.9.6", "importlib_resources>=6"]

setuptools.setup(
    name="act-jax",
    version="0.1.0",
    description="Adversarial Concurrent Training (ACT, BMVC 2020) in JAX/Flax for TPU and GPU",
    long_description=pathlib.Path("README.md").read_text(),
    long_description_content_type="text/markdown",
    # configs: the shipped recipes, importable from anywhere (`from configs import base` in a
    # config file of one's own) and found by name (`--config=fashion_mnist`).
    packages=setuptools.find_packages(include=["act_jax", "act_jax.*", "configs"]),
    python_requires=">=3.11",
    install_requires=[
        "absl-py>=2.1",
        "etils[epath]>=1.7",
        "flax>=0.10",
        "jax>=0.7",
        "matplotlib>=3.8",  # the eps-sweep plot of act_jax.evaluate
        "ml_collections>=0.1.1",
        "numpy>=1.26",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "pillow>=10",
        "tensorboardX>=2.6",
        "tqdm>=4.66",
    ],
    extras_require={
        # ImageNet (tf.data) and a first read of CIFAR; Fashion-MNIST and cached CIFAR need none.
        "tfds": TFDS_EXTRA,
        "test": ["pytest>=8", "chex>=0.1.87", "ruff>=0.6", *TFDS_EXTRA],
        "torch": ["torch==2.13.0", "safetensors>=0.4"],  # CPU build; benchmarks/, parity, export
    },
)
