"""Triton kernels, their dispatchers and their PyTorch references. Imports nothing from catlip/ or engine/.

  linear_bce.py            linear_bce(x, weight, bias, labels, ..., impl="triton" | "torch"): the fused
                           linear + sigmoid BCE of the CatLIP head; the dispatcher and autograd Function
  linear_bce_params.py     LinearBCEParams: a call's non-tensor arguments, its variant switches
  linear_bce_fwd.py        its Triton kernels and launcher (loss and gradients in the forward)
  linear_bce_split.py      its design "cublas": cuBLAS logits, then a Triton epilogue kernel
  linear_bce_softplus.py   the @triton.jit softplus / sigmoid helpers both epilogues share
  flash_attention.py       attention(q, k, v, impl="triton" | "sdpa" | "math"), attention_qkv(qkv, ...):
                           the dispatchers the model calls; flash_attention(q, k, v),
                           flash_attention_qkv(qkv): the Triton op, its autograd Functions
  flash_attention_fwd.py   the forward kernel, its launcher, the block shapes both stages share
  flash_attention_bwd.py   the backward: a dQ kernel, then a dK/dV kernel
  flash_attention_bwd_onepass.py   the one-launch backward (bwd="onepass")
  reference.py             the plain-PyTorch references that the model, tests and benchmarks share
  variants.py              every op's variants, the keyword that picks one, the ones a GPU run must
                           settle; autotune's switch

The ops are called from their modules (`from kernels.linear_bce import linear_bce`, `from
kernels.flash_attention import attention_qkv`): the package re-exports nothing, so
`kernels.linear_bce` is always the module. Importing a dispatcher does not import Triton: the
dispatcher modules load their Triton launchers the first time impl="triton" runs, so a CPU model on
"torch" / "sdpa" / "math" never pays Triton's import (about 2 s).
"""
