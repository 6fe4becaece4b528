"""setuptools' entry: the metadata is in pyproject.toml (PEP 621); this adds what that file cannot.

The packages are every top-level package of the checkout but tests/ and perf/ (catlip/, engine/,
kernels/ and any added beside them; never tests/, perf/ or runs/). The run configs of configs/
ship inside the wheel as package data of ``engine.configs`` (their folder mapped there), where
``catlip config list`` and ``catlip config show`` find them once installed.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(exclude=["tests", "tests.*", "perf", "perf.*"]) + ["engine.configs"],
    package_dir={"engine.configs": "configs"},
    package_data={"engine.configs": ["*.yaml"]},
)
