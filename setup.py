"""catlip-engine: a kernel-optimized training engine for CatLIP (arXiv 2404.15653).

Dependencies are pinned in requirements.txt (+ constraints.txt); the README's commands install them.
"""

from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = next(
    line.split('"')[1]
    for line in (here / "catlip" / "__init__.py").read_text().splitlines()
    if line.startswith("__version__")
)

setup(
    name="catlip-engine",
    version=version,
    description="CatLIP pre-training: caption-to-synset labels, Triton kernels, DALI + DeepSpeed trainer",
    long_description=(here / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["catlip*", "engine*", "kernels*", "provision*"]),
    install_requires=[
        "torch>=2.4",
        "triton>=3.0",
        "nltk>=3.9",
        "ftfy>=6",
        "numpy",
        "pillow",
        "tqdm",
        "pyyaml",
    ],
    extras_require={
        "train": ["deepspeed>=0.19", "nvidia-dali-cuda130>=2.4"],
        "dev": ["pytest", "ruff"],
    },
    entry_points={"console_scripts": ["catlip=engine.cli:main"]},
)
