"""Kernel dispatch in one place: the model calls the kernels' dispatchers, the
dispatchers and references import no Triton, and there is one attention reference.

The no-Triton checks run in a fresh interpreter (a child process): this one has imported Triton
already, for the other tests. Precision: fp32 and fp64 on the CPU; "triton" runs under
TRITON_INTERPRET=1 (tests/conftest.py) with IEEE fp32 dots.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from catlip.models import Attention, CatLIPHead
from kernels.flash_attention import ATTN_IMPLS, attention, attention_qkv
from kernels.linear_bce import linear_bce
from kernels.reference import attention_reference, linear_bce_reference

ROOT = Path(__file__).resolve().parents[1]


def _fresh_python(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)


# Each step runs after the ones before it in one fresh interpreter, and none may load Triton.
NO_TRITON_STEPS = {
    "import catlip.models": "import catlip.models",
    "import kernels and its dispatcher modules": (
        "import kernels, kernels.reference, kernels.linear_bce, kernels.flash_attention"
    ),
    "a CPU CatLIP model on sdpa / math + torch, forward and backward": (
        "import torch\n"
        "from catlip.models import CatLIPModel, ViTConfig\n"
        "cfg = ViTConfig(image_size=16, patch_size=8, width=32, depth=1, heads=2)\n"
        "for attn in ('sdpa', 'math'):\n"
        "    m = CatLIPModel(cfg, 10, attn_impl=attn, loss_impl='torch')\n"
        "    m(torch.randn(2, 3, 16, 16), torch.tensor([[1, -1], [3, 4]])).backward()"
    ),
    "the dispatchers with their PyTorch impls": (
        "import torch\n"
        "from kernels.linear_bce import linear_bce\n"
        "from kernels.flash_attention import attention\n"
        "q = torch.randn(1, 2, 5, 8)\n"
        "attention(q, q, q, impl='sdpa', causal=True); attention(q, q, q, impl='math')\n"
        "linear_bce(torch.randn(2, 4), torch.randn(6, 4), None, torch.tensor([[0], [5]]), impl='torch')"
    ),
}
_CHECK = (
    "loaded = sorted(m for m in sys.modules if m == 'triton' or m.startswith('triton.'))\n"
    "assert not loaded, {step!r} + ': imported Triton ' + str(loaded[:3])\n"
    "print('no Triton after:', {step!r}, flush=True)\n"
)


def test_no_triton_unless_a_triton_impl_runs() -> None:
    """`python -c "import catlip.models, sys; assert 'triton' not in sys.modules"`, and on: a CPU
    model's training step and the dispatchers on "torch" / "sdpa" / "math" load no Triton."""
    code = "import sys\n" + "".join(
        body + "\n" + _CHECK.format(step=step) for step, body in NO_TRITON_STEPS.items()
    )
    res = _fresh_python(code)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    assert res.stdout.count("no Triton after") == len(NO_TRITON_STEPS)


def test_triton_impl_imports_triton() -> None:
    """The other side: impl="triton" does load the launchers (so the checks above can fail)."""
    code = (
        "import os, sys, torch\n"
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "from kernels.linear_bce import linear_bce\n"
        "assert 'triton' not in sys.modules\n"
        "linear_bce(torch.randn(2, 16), torch.randn(6, 16), None, torch.tensor([[0], [5]]), impl='triton')\n"
        "assert 'kernels.linear_bce_fwd' in sys.modules and 'triton' in sys.modules\n"
    )
    res = _fresh_python(code)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]


# ------------------------------------------------------------------------------------ attention
def test_causal_triton_is_a_clear_error() -> None:
    qkv = torch.randn(1, 5, 3, 2, 16)
    with pytest.raises(ValueError, match="non-causal"):
        attention_qkv(qkv, causal=True, impl="triton")
    with pytest.raises(ValueError, match="non-causal"):
        Attention(32, 2, "triton", causal=True)(torch.randn(1, 5, 32))
    with pytest.raises(ValueError, match="impl must be one of"):
        Attention(32, 2, "flash")(torch.randn(1, 5, 32))


@pytest.mark.parametrize("causal", [False, True])
def test_reference_matches_sdpa(causal: bool) -> None:
    """The one math reference, causal or not, square or not, against SDPA in float64."""
    torch.manual_seed(0)
    q = torch.randn(2, 3, 7, 16, dtype=torch.float64)
    k, v = torch.randn(2, 3, 11, 16, dtype=torch.float64), torch.randn(2, 3, 11, 16, dtype=torch.float64)
    for s_k in (7, 11):
        want = F.scaled_dot_product_attention(q, k[:, :, :s_k], v[:, :, :s_k], is_causal=causal, scale=0.3)
        got = attention_reference(q, k[:, :, :s_k], v[:, :, :s_k], 0.3, causal=causal)
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("impl", ATTN_IMPLS)
def test_model_attention_is_the_dispatcher(impl: str, causal: bool) -> None:
    """Attention(impl) = proj(dispatcher(qkv)) bit for bit, and "math" is attention_reference
    itself: the model holds no switch or formula of its own."""
    if impl == "triton" and causal:
        pytest.skip("non-causal kernel (test_causal_triton_is_a_clear_error)")
    torch.manual_seed(1)
    mod = Attention(48, 2, impl, causal=causal)  # head dim 24: 1/sqrt(24) is not exact
    x = torch.randn(2, 9, 48)
    qkv = mod.qkv(x).view(2, 9, 3, 2, 24)
    want = mod.proj(attention_qkv(qkv, causal=causal, impl=impl).reshape(2, 9, 48))
    assert torch.equal(mod(x), want)
    if impl == "math":
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        ref = attention_reference(q, k, v, causal=causal).transpose(1, 2).reshape(2, 9, 48)
        assert torch.equal(mod(x), mod.proj(ref))


def test_attention_impls_agree() -> None:
    torch.manual_seed(2)
    q, k, v = (torch.randn(1, 2, 20, 32) for _ in range(3))
    ref = attention_reference(q.double(), k.double(), v.double())
    for impl in ATTN_IMPLS:
        torch.testing.assert_close(attention(q, k, v, impl=impl).double(), ref, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------- the head
@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_head_loss_is_the_dispatcher(impl: str) -> None:
    """CatLIPHead(labels) = linear_bce(impl=loss_impl) bit for bit, gradients included."""
    torch.manual_seed(3)
    head = CatLIPHead(32, 50, loss_impl=impl, label_smoothing=0.1)
    torch.nn.init.normal_(head.weight, std=0.1)
    x = torch.randn(6, 32, requires_grad=True)
    labels = torch.tensor([[1, 7, -1], [49, -1, -1], [0, 2, 3], [-1, -1, -1], [5, 6, 8], [9, -1, -1]])
    s = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.5, 1.0])
    loss = head(x, labels, s)
    grads = torch.autograd.grad(loss, [x, head.weight, head.bias])
    want = linear_bce(x, head.weight, head.bias, labels, label_smoothing=0.1, sample_weight=s, impl=impl)
    assert torch.equal(loss, want)
    for g, w in zip(grads, torch.autograd.grad(want, [x, head.weight, head.bias]), strict=True):
        assert torch.equal(g, w)
    if impl == "torch":
        ref = linear_bce_reference(x, head.weight, head.bias, labels, label_smoothing=0.1, sample_weight=s)
        assert torch.equal(loss, ref)


def test_validate_labels_switch() -> None:
    """validate_labels=False skips the checks (and their host sync); the loss is unchanged."""
    x, w = torch.randn(3, 16), torch.randn(20, 16)
    labels = torch.tensor([[1, -1], [4, 19], [-1, -1]])
    for impl in ("torch", "triton"):
        on = linear_bce(x, w, None, labels, impl=impl)
        off = linear_bce(x, w, None, labels, impl=impl, validate_labels=False)
        assert torch.equal(on, off)
        with pytest.raises(ValueError, match="duplicate"):
            linear_bce(x, w, None, torch.tensor([[1, 1]] * 3), impl=impl)
