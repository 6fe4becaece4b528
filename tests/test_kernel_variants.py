"""The kernels' variants behind one documented switch each (kernels/variants.py).

* Every row of kernels.variants.VARIANTS is a keyword of the op's public function and a field of its
  params dataclass, both defaulting to the row's first choice.
* The keyword selects the variant: a spy on each variant's own code path sees it run for that
  choice and only for it (Triton interpreter, fp32 on the CPU; the numerics of each variant are
  checked against the oracle in tests/test_linear_bce.py and tests/test_flash_attention.py).
* No module of kernels/ reads the environment at import; the unsettled variants are the ones the
  GPU suite's benchmarks compare.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
from pathlib import Path

import pytest
import torch

from kernels.flash_attention import AttentionParams, flash_attention, flash_attention_qkv
from kernels.linear_bce import LinearBCEParams, linear_bce
from kernels.variants import VARIANTS, autotune_on, check, unsettled

ROOT = Path(__file__).resolve().parents[1]
OPS = {
    "linear_bce": ([linear_bce], LinearBCEParams),
    "flash_attention": ([flash_attention, flash_attention_qkv], AttentionParams),
}
CASES = [(v.op, v.switch, choice) for v in VARIANTS for choice in v.choices]


def test_every_variant_is_a_keyword_and_a_params_field_with_the_first_choice_as_default() -> None:
    assert {v.op for v in VARIANTS} == set(OPS)
    for v in VARIANTS:
        functions, params = OPS[v.op]
        for fn in functions:
            assert inspect.signature(fn).parameters[v.switch].default == v.choices[0], (fn, v.switch)
        fields = {f.name: f.default for f in dataclasses.fields(params)}
        assert fields[v.switch] == v.choices[0], (params, v.switch)
        assert check(v.op, v.switch, v.choices[-1]) == v.choices[-1]


def _spy(monkeypatch: pytest.MonkeyPatch, module: str, name: str) -> list:
    """Record the calls of module.name (the function still runs)."""
    mod = importlib.import_module(module)
    real, calls = getattr(mod, name), []

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(mod, name, spy)
    return calls


def _run_linear_bce(**switch) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 16, generator=gen, requires_grad=True)  # (B, D)
    w = torch.randn(40, 16, generator=gen, requires_grad=True)  # (V, D)
    b = torch.randn(40, generator=gen, requires_grad=True)  # (V,)
    labels = torch.tensor([[1, 7], [3, -1], [0, 39], [-1, -1], [5, 6]])  # (B, L)
    linear_bce(x, w, b, labels, impl="triton", **switch).backward()


@pytest.mark.parametrize(("op", "switch", "choice"), CASES)
def test_the_switch_selects_each_variant(monkeypatch: pytest.MonkeyPatch, op, switch, choice) -> None:
    if (op, switch) == ("linear_bce", "design"):
        calls = _spy(monkeypatch, "kernels.linear_bce_split", "cublas_logits_then_epilogue")
        _run_linear_bce(design=choice)
        assert bool(calls) == (choice == "cublas"), (choice, len(calls))
    elif (op, switch) == ("linear_bce", "dx_accumulate"):
        calls = _spy(monkeypatch, "kernels.linear_bce_fwd", "_accumulate_dx")
        _run_linear_bce(dx_accumulate=choice)
        assert calls and {c[0][3] for c in calls} == {choice}
    elif (op, switch) == ("linear_bce", "validate_labels"):
        calls = _spy(monkeypatch, "kernels.linear_bce", "check_labels")
        _run_linear_bce(validate_labels=choice)
        assert bool(calls) == choice
    elif (op, switch) == ("flash_attention", "bwd"):
        calls = _spy(monkeypatch, "kernels.flash_attention_bwd_onepass", "attention_bwd_onepass")
        qkv = torch.randn(1, 33, 3, 2, 32, generator=torch.Generator().manual_seed(1)).requires_grad_()
        flash_attention_qkv(qkv, bwd=choice).sum().backward()  # (B, S, 3, H, D): onepass supports it
        q, k, v = (t.detach().requires_grad_() for t in qkv.detach().permute(2, 0, 3, 1, 4).unbind(0))
        flash_attention(q, k, v, bwd=choice).sum().backward()
        assert len(calls) == (2 if choice == "onepass" else 0), (choice, len(calls))
    else:
        pytest.fail(f"no check for the variant {op}.{switch}: add one here")


def test_a_choice_outside_the_registry_is_refused() -> None:
    with pytest.raises(ValueError, match="design"):
        LinearBCEParams(design="fastest")
    with pytest.raises(ValueError, match="dx_accumulate"):
        LinearBCEParams(dx_accumulate="fastest")
    with pytest.raises(ValueError, match="bwd"):
        AttentionParams(1.0, bwd="fused")


def test_autotune_is_the_keyword_else_the_environment_at_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CATLIP_AUTOTUNE", raising=False)
    assert autotune_on() is False and autotune_on(True) is True
    monkeypatch.setenv("CATLIP_AUTOTUNE", "1")
    assert autotune_on() is True and autotune_on(False) is False


def _environ_reads_at_import(tree: ast.Module) -> list[int]:
    """Lines that read os.environ / os.getenv outside any function or class body."""
    lines = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = top and not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if top and isinstance(child, ast.Attribute) and child.attr in ("environ", "getenv"):
                lines.append(child.lineno)
            visit(child, inner)

    visit(tree, True)
    return lines


def test_no_environment_read_at_import_in_kernels() -> None:
    found = {
        str(path.relative_to(ROOT)): lines
        for path in sorted((ROOT / "kernels").glob("*.py"))
        if (lines := _environ_reads_at_import(ast.parse(path.read_text())))
    }
    assert not found, f"environment read at import time: {found}"
    # the check itself finds one
    assert _environ_reads_at_import(ast.parse("import os\nA = os.environ.get('X')\n")) == [2]


def test_unsettled_variants_are_compared_by_the_gpu_suite() -> None:
    suite = (ROOT / "perf" / "gpu_suite.sh").read_text()
    assert unsettled(), "every variant settled: drop the alternatives, or keep this test honest"
    for v in unsettled():
        bench, providers = v.compared_by.split(": ")
        assert f"python3 {bench} --quick" in suite, bench
        module = importlib.import_module(bench.removesuffix(".py").replace("/", "."))
        for provider in providers.split(", "):
            assert provider in module.QUICK_PROVIDERS, (bench, provider)
