"""Triton kernels, their dispatchers and their PyTorch references. Imports nothing from catlip/ or engine/.

kernels.linear_bce(x, weight, bias, labels, ..., impl="triton" | "torch")   # linear_bce*.py
kernels.flash_attention(q, k, v, scale=None)                                # flash_attention*.py
kernels.flash_attention.attention(q, k, v, causal=..., impl="triton" | "sdpa" | "math")
kernels.reference                                                           # the PyTorch references

Importing this package does not import Triton: the dispatcher modules (kernels/linear_bce.py,
kernels/flash_attention.py) load their Triton launchers (linear_bce_fwd.py, flash_attention_fwd.py,
flash_attention_bwd.py) the first time impl="triton" runs, so a CPU model on "torch" / "sdpa" /
"math" never pays Triton's import (about 2 s). The package attributes `linear_bce` and
`flash_attention` are the functions; the modules of the same name are reached with
importlib.import_module("kernels.linear_bce").
"""

from kernels.flash_attention import flash_attention
from kernels.linear_bce import linear_bce

__all__ = ["flash_attention", "linear_bce"]
