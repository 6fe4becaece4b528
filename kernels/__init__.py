"""Triton kernels and their PyTorch references. Imports nothing from catlip/ or engine/."""
