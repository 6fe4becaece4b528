"""Triton kernels and their PyTorch references. Imports nothing from catlip/ or engine/.

kernels.linear_bce(x, weight, bias, labels, ...)  # fused CatLIP head + sigmoid BCE (linear_bce*.py)
kernels.flash_attention(q, k, v, scale=None)      # fused attention for ViT shapes (flash_attention*.py)
kernels.reference                                 # the plain-PyTorch references of both
"""

from kernels.flash_attention import flash_attention
from kernels.linear_bce import linear_bce

__all__ = ["flash_attention", "linear_bce"]
