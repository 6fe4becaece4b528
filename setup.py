"""setuptools' entry: the metadata is in pyproject.toml (PEP 621); this adds what that file cannot.

The packages are found under catlip/, engine/ and kernels/ (never tests/, perf/ or runs/), and the
run configs of configs/ ship inside the wheel as package data of ``engine.configs`` (their folder
mapped there), where ``catlip config list`` and ``catlip config show`` find them once installed.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["catlip", "catlip.*", "engine", "engine.*", "kernels", "kernels.*"])
    + ["engine.configs"],
    package_dir={"engine.configs": "configs"},
    package_data={"engine.configs": ["*.yaml"]},
)
