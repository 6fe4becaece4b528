"""Compile every Triton kernel of kernels/ for a GPU this machine does not have; report the resources.

For each kernel, each launch configuration the kernels can choose (the pinned ones and every
autotune candidate of the running Triton version) and the argument variants that change the
code (dtype, head dim, bias / weights / gradients flags), this builds the kernel with
`triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))` (and sm_80 for the pinned
16-bit configs), then reads from the artefacts: registers, stack frame and local memory
(`cuobjdump -res-usage`, Triton's bundled copy), spill instructions (STL/LDL in `cuobjdump -sass`),
shared memory (`metadata.shared`), tensor-core instructions (wgmma / mma.sync in the PTX), and the
CTAs per SM those allow. A row fails when it spills (stack or local memory, or spill
instructions) or when its shared memory is over the target's per-block limit.

The arguments are specialised as a launch would specialise them: pointers 16-byte aligned, unit
strides as the constant 1, other integers divisible by 16 where the representative shapes make
them so (ViT-B/16 and ViT-H/14 widths), except those a kernel declares do_not_specialize.

    python perf/compile_kernels.py --out perf/results/compiled_kernels.csv   # appends this Triton's rows
    python perf/compile_kernels.py --candidates      # also the wider space the configs were picked from
    python perf/compile_kernels.py --check perf/results/compiled_kernels.csv # compare with committed rows

Needs no GPU and must run without TRITON_INTERPRET (it is removed here before Triton loads).
Exit status 1 if a choosable configuration spills or overflows shared memory, or (--check) if a
row differs from the committed table for this Triton version. Run under the pinned Triton
(scripts/env.sh) and under 3.6 (scripts/env_triton36.sh); tests/test_compiled_kernels.py does both.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # kernels must be JIT functions, not interpreted ones

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

FIELDS = [
    "triton", "target", "kernel", "role", "variant", "dtype", "block", "warps", "stages",
    "regs", "stack", "local", "spill_insts", "shared", "shared_limit", "ctas_per_sm",
    "mma", "status", "compile_s",
]  # fmt: skip
# Per-block shared memory a kernel may take, and the SM's budget for occupancy (CUDA's tables).
SHARED_LIMIT = {90: 232448, 80: 166912}
SM_SHARED = {90: 233472, 80: 167936}
SM_REGS, MAX_WARPS, MAX_CTAS = 65536, 64, 32


@dataclass
class Variant:
    kernel: str  # module:function
    role: str  # pinned | autotune | candidate
    variant: str  # what the arguments select (flags, head dim)
    dtype: str
    args: dict  # every non-constexpr parameter: a pointer type string, None, an int or a float
    constexprs: dict  # explicit constexpr parameters (block sizes, flags); heuristics fill the rest
    num_warps: int
    num_stages: int
    block: str
    targets: tuple[int, ...] = (90,)
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Compiling one variant
# ---------------------------------------------------------------------------------------------
def _unwrap(kernel):
    """(JITFunction, [heuristics dicts, outermost first]) of a possibly decorated kernel."""
    chain = []
    fn = kernel
    while not isinstance(fn, triton.runtime.jit.JITFunction):
        chain.append(fn.values)
        fn = fn.fn
    return fn, chain


def _resolve(module_fn: str):
    module, name = module_fn.split(":")
    mod = __import__(module, fromlist=[name])
    return getattr(mod, name)


def compile_variant(v: Variant, target: int):
    fn, chain = _unwrap(_resolve(v.kernel))
    values = {**v.args, **v.constexprs}
    for heuristics in reversed(chain):  # innermost first, as at launch
        for name, rule in heuristics.items():
            values[name] = rule(values)
    no_spec = {fn.arg_names[i] if isinstance(i, int) else i for i in getattr(fn, "do_not_specialize", ())}
    signature, constants, attrs = {}, {}, {}
    for i, p in enumerate(fn.params):
        name, value = p.name, values[p.name]
        if p.is_constexpr:
            signature[name], constants[name] = "constexpr", value
        elif value is None:
            signature[name], constants[name] = "constexpr", None
        elif isinstance(value, str):  # a pointer type, 16-byte aligned
            signature[name] = value
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int):
            if value == 1 and name not in no_spec:
                signature[name], constants[name] = "constexpr", 1
            else:
                signature[name] = "i32" if abs(value) < 2**31 else "i64"
                if value % 16 == 0 and name not in no_spec:
                    attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            raise TypeError(f"{v.kernel}: cannot specialise {name}={value!r}")
    src = triton.compiler.ASTSource(fn, signature, constants, attrs)
    opts = {"num_warps": v.num_warps, "num_stages": v.num_stages}
    return triton.compile(src, target=GPUTarget("cuda", target, 32), options=opts)


def _tool(name: str) -> str:
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


# cuobjdump's reading of a cubin, cached by the kernel's hash (Triton caches the build itself, so a
# rerun with no kernel change takes seconds instead of ~1 s per build)
RESOURCE_CACHE = (
    Path(os.environ.get("CATLIP_CACHE", Path.home() / ".cache" / "catlip-engine")) / "cubin-resources"
)


def _cuobjdump(ck) -> str:
    cached = RESOURCE_CACHE / f"{ck.metadata.hash}.txt"
    if cached.exists():
        return cached.read_text()
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(ck.asm["cubin"])
        f.flush()
        out = subprocess.run(
            [_tool("cuobjdump"), "-res-usage", "-sass", f.name], capture_output=True, text=True
        )
    if out.returncode != 0 or "REG:" not in out.stdout:
        raise RuntimeError(f"cuobjdump failed: {out.stderr[:300]}")
    RESOURCE_CACHE.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}")
    tmp.write_text(out.stdout)
    tmp.replace(cached)
    return out.stdout


def resources(ck, target: int, num_warps: int) -> dict:
    sass = usage = _cuobjdump(ck)
    get = {k: int(re.search(rf"{k}:(\d+)", usage).group(1)) for k in ("REG", "STACK", "LOCAL")}
    ptx = ck.asm["ptx"]
    shared = int(ck.metadata.shared)
    regs_per_warp = -(-get["REG"] * 32 // 256) * 256
    ctas = min(
        SM_REGS // (regs_per_warp * num_warps),
        SM_SHARED[target] // (shared + 1024),
        MAX_WARPS // num_warps,
        MAX_CTAS,
    )
    return {
        "regs": get["REG"],
        "stack": get["STACK"],
        "local": get["LOCAL"],
        "spill_insts": len(re.findall(r"\b(?:STL|LDL)(?:\.\w+)*\b", sass)),
        "shared": shared,
        "shared_limit": SHARED_LIMIT[target],
        "ctas_per_sm": ctas,
        "mma": f"wgmma {ptx.count('wgmma.mma_async')} / mma.sync {ptx.count('mma.sync')}",
    }


def status(row: dict) -> str:
    problems = []
    if row["stack"] or row["local"] or row["spill_insts"]:
        problems.append(
            f"spills (stack {row['stack']} B, local {row['local']} B, {row['spill_insts']} STL/LDL)"
        )
    if row["shared"] > row["shared_limit"]:
        problems.append(f"shared {row['shared']} B > {row['shared_limit']} B")
    return "; ".join(problems) or "ok"


# ---------------------------------------------------------------------------------------------
# What the kernels can launch
# ---------------------------------------------------------------------------------------------
def linear_bce_variants(candidates: bool) -> list[Variant]:
    import kernels.linear_bce_fwd as lbf

    out = []
    b, n, d, vc = 8192, 16384, 1280, 16384  # ViT-H width; a 16K-column chunk
    flag_sets = {
        # the trainer's call: bias, sample weights, all three gradients
        "train": {"b_ptr": "B", "s_ptr": "*fp32", "dz_ptr": "T", "db_part_ptr": "*fp32", "eps": 0.0},
        "train+smoothing": {
            "b_ptr": "B",
            "s_ptr": "*fp32",
            "dz_ptr": "T",
            "db_part_ptr": "*fp32",
            "eps": 0.1,
        },
        "train, no bias": {"b_ptr": None, "s_ptr": "*fp32", "dz_ptr": "T", "db_part_ptr": None, "eps": 0.0},
        "no_grad (eval)": {"b_ptr": "B", "s_ptr": None, "dz_ptr": None, "db_part_ptr": None, "eps": 0.0},
    }

    def fwd(cfg, role, dtype, flags_name, precision="tf32", d_=d, target=90):
        acc = "fp64" if dtype == "fp64" else "fp32"
        flags = {k: (f"*{dtype}" if v in ("B", "T") else v) for k, v in flag_sets[flags_name].items()}
        args = {
            "x_ptr": f"*{dtype}", "w_ptr": f"*{dtype}", "row_part_ptr": f"*{acc}", **flags,
            "B": b, "N": n, "D": d_, "stride_xb": d_, "stride_xd": 1, "stride_wn": d_, "stride_wd": 1,
            "stride_bv": 1, "stride_dz": vc, "stride_dbp": vc,
        }  # fmt: skip
        consts = {**cfg.kwargs(), "ACC": getattr(triton.language, "float64" if acc == "fp64" else "float32"),
                  "DOT_PRECISION": precision}  # fmt: skip
        label = flags_name + (
            "" if d_ == d else f", D {d_}" + ("" if d_ % cfg.BLOCK_K == 0 else " (masked K)")
        )
        label += f", {precision} dots" if dtype == "fp32" else ""
        block = f"{cfg.BLOCK_M}x{cfg.BLOCK_N}x{cfg.BLOCK_K}"
        return Variant("kernels.linear_bce_fwd:_fwd_kernel", role, label, dtype, args, consts,
                       cfg.num_warps, cfg.num_stages, block, (target,))  # fmt: skip

    pinned16, pinned32 = lbf._PINNED_16, lbf._PINNED_32
    for flags in flag_sets:  # sm_90: every flag variant of the pinned 16-bit config; sm_80 its own
        out.append(fwd(pinned16, "pinned", "bf16", flags))
        out.append(fwd(lbf._PINNED_16_SM80, "pinned", "bf16", flags, target=80))
    out.append(fwd(pinned16, "pinned", "fp16", "train"))
    for target in (90, 80):  # D not a multiple of 64: masked K loads, unmasked at a multiple of 32
        out.append(fwd(lbf._MASKED_K_16, "pinned", "bf16", "train", d_=1000, target=target))
        out.append(fwd(lbf._MASKED_K_16, "pinned", "bf16", "train", d_=1056, target=target))
    for cfg in lbf._TUNE_CONFIGS_16:
        if cfg != pinned16:
            for flags in ("train", "train, no bias", "no_grad (eval)"):
                out.append(fwd(cfg, "autotune", "bf16", flags))
    for precision in ("ieee", "tf32"):
        for flags in ("train", "no_grad (eval)"):
            out.append(fwd(pinned32, "pinned", "fp32", flags, precision))
        out.append(fwd(lbf._MASKED_K_32, "pinned", "fp32", "train", precision, d_=1000))
    for cfg in lbf._TUNE_CONFIGS_32:
        if cfg != pinned32:
            out.append(fwd(cfg, "autotune", "fp32", "train", "tf32"))
    out.append(fwd(lbf._PINNED_64, "pinned", "fp64", "train", "ieee"))
    if candidates:
        for bm, bn, w, st in (
            (128, 128, 8, 3),
            (128, 128, 8, 4),
            (128, 64, 4, 3),
            (64, 64, 4, 4),
            (64, 128, 4, 5),
        ):
            cfg = lbf._FwdConfig(bm, bn, 64, num_warps=w, num_stages=st)
            if cfg not in lbf._TUNE_CONFIGS_16:
                for flags in ("train", "train, no bias"):
                    out.append(fwd(cfg, "candidate", "bf16", flags))

    # the positives' gather and scatter (launcher: BLOCK_P 32 / 128, BLOCK_D <= 128, 4 warps)
    for dtype in ("bf16", "fp32"):
        out.append(Variant(
            "kernels.linear_bce_fwd:_gather_kernel", "pinned", "bias", dtype,
            {"x_ptr": f"*{dtype}", "w_ptr": f"*{dtype}", "b_ptr": f"*{dtype}", "labels_ptr": "*i64",
             "zpos_ptr": "*fp32", "P": b * 32, "L": 32, "D": d, "stride_xb": d, "stride_xd": 1,
             "stride_wv": d, "stride_wd": 1, "stride_bv": 1, "stride_lb": 32, "stride_ll": 1},
            {"ACC": triton.language.float32, "BLOCK_P": 32, "BLOCK_D": 128}, 4, 3, "32x128",
            (90, 80) if dtype == "bf16" else (90,),
        ))  # fmt: skip
        out.append(Variant(
            "kernels.linear_bce_fwd:_scatter_kernel", "pinned", "weights", dtype,
            {"labels_ptr": "*i64", "zpos_ptr": "*fp32", "s_ptr": "*fp32", "dz_ptr": f"*{dtype}",
             "P": b * 32, "L": 32, "v0": 0, "N": n, "stride_lb": 32, "stride_ll": 1, "stride_dz": vc,
             "eps": 0.0},
            {"ACC": triton.language.float32, "BLOCK_P": 128}, 4, 3, "128",
            (90, 80) if dtype == "bf16" else (90,),
        ))  # fmt: skip
    # design E's epilogue over cuBLAS logits (EPILOGUE_BLOCK, 4 warps)
    bm, bn = lbf.EPILOGUE_BLOCK
    for dtype in ("bf16", "fp32"):
        for flags, grad, db in (("train", True, "*fp32"), ("no_grad (eval)", False, None)):
            out.append(Variant(
                "kernels.linear_bce_split:_epilogue_kernel", "pinned", flags, dtype,
                {"z_ptr": f"*{dtype}", "s_ptr": "*fp32" if grad else None, "row_part_ptr": "*fp32",
                 "db_part_ptr": db, "B": b, "N": n, "stride_z": vc, "stride_dbp": vc, "eps": 0.0},
                {"ACC": triton.language.float32, "BLOCK_M": bm, "BLOCK_N": bn,
                 "LOG_PRODUCT": True, "WRITE_GRAD": grad}, 4, 3, f"{bm}x{bn}",
                (90, 80) if dtype == "bf16" else (90,),
            ))  # fmt: skip
    return out


# (B, H, S) per head dim: the shapes the attention kernels are pinned for; qkv packed as the ViT does
ATTN_SHAPES = {
    32: (256, 24, 197),
    40: (128, 8, 197),
    64: (256, 12, 197),
    80: (128, 16, 257),
    96: (128, 8, 197),
    128: (64, 8, 197),
}
# the head dims each table entry is built at: every padded width class of the tables
ATTN_D = {90: (32, 40, 64, 80, 96, 128), 80: (32, 40, 64, 80, 96, 128)}


def _attn_args(kernel: str, d: int, dtype: str) -> dict:
    b, h, s = ATTN_SHAPES[d]
    q = {"b": s * 3 * h * d, "h": d, "m": 3 * h * d}  # views of (B, S, 3, H, D)
    o = {"b": s * h * d, "h": d, "m": h * d}  # (B, S, H, D) memory
    names = {
        "fwd": [("Q", q), ("K", q), ("V", q), ("Out", o)],
        "dq": [("Q", q), ("K", q), ("V", q), ("Out", o), ("DO", o), ("DQ", q)],
        "dkdv": [("Q", q), ("K", q), ("V", q), ("DO", o), ("DK", q), ("DV", q)],
        "onepass": [("Q", q), ("K", q), ("V", q), ("Out", o), ("DO", o), ("DQ", q), ("DK", q), ("DV", q)],
    }[kernel]
    args = {name: f"*{dtype}" for name, _ in names}
    args.update(LSE="*fp32", DELTA="*fp32")
    if kernel == "onepass":
        args["DQACC"] = "*fp32"
    stride_names = {"Q": "q", "K": "k", "V": "v", "Out": "o", "DO": "do", "DQ": "dq", "DK": "dk", "DV": "dv"}
    for name, st in names:
        pre = stride_names[name]
        row = {"q": "m", "k": "n", "v": "n", "o": "m", "do": "m", "dq": "m", "dk": "n", "dv": "n"}[pre]
        args.update({f"stride_{pre}b": st["b"], f"stride_{pre}h": st["h"], f"stride_{pre}{row}": st["m"]})
    args.update(H=h, S_Q=s, S_K=s, qk_scale=0.18, scale=0.125)
    if kernel == "fwd":
        args.pop("DELTA")
        args.pop("scale")
    return args


def attention_variants(candidates: bool) -> list[Variant]:
    import kernels.flash_attention_bwd as bwd
    import kernels.flash_attention_bwd_onepass as one
    import kernels.flash_attention_fwd as fwd

    kernels = {
        "fwd": ("kernels.flash_attention_fwd:_attn_fwd_kernel", fwd.FWD_CONFIGS),
        "dq": ("kernels.flash_attention_bwd:_bwd_dq_kernel", bwd.DQ_CONFIGS),
        "dkdv": ("kernels.flash_attention_bwd:_bwd_dkdv_kernel", bwd.DKDV_CONFIGS),
        "onepass": ("kernels.flash_attention_bwd_onepass:_bwd_onepass_kernel", one.ONEPASS_CONFIGS),
    }
    out = []

    def variant(kname, cfg, role, d, dtype, precision="tf32", int64=False, target=90):
        path, _ = kernels[kname]
        consts = {"HEAD_DIM": d, "PRECISION": precision, "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n,
                  "INT64_ROWS": int64}  # fmt: skip
        label = f"D {d}, S {ATTN_SHAPES[d][2]}" + (", int64 rows" if int64 else "")
        label += f", {precision} dots" if dtype == "fp32" else ""
        return Variant(path, role, label, dtype, _attn_args(kname, d, dtype), consts,
                       cfg.num_warps, cfg.num_stages, f"{cfg.block_m}x{cfg.block_n}", (target,))  # fmt: skip

    for kname, (_, table) in kernels.items():
        ok = (lambda d: one.onepass_supported(197, d)) if kname == "onepass" else (lambda d: True)
        for arch, dims in ATTN_D.items():  # 16-bit: what each arch picks at each width class
            for d in filter(ok, dims):
                out.append(variant(kname, table.pick(d, "16", arch // 10), "pinned", d, "bf16", target=arch))
        for d in filter(ok, (64, 80)):  # fp32 on Hopper: TF32 dots, and IEEE (FMA units)
            if kname == "dkdv" and sum(fwd.head_dim_split(d)) > bwd.TF32_DKDV_MAX_WIDTH:
                pass  # the launcher takes IEEE dots there (attention_bwd): the ieee row below
            elif kname == "onepass":
                pass  # not offered with TF32 dots (attention_bwd takes the two-launch backward)
            else:
                out.append(variant(kname, table.pick(d, "tf32"), "pinned", d, "fp32", "tf32"))
            out.append(variant(kname, table.pick(d, "ieee"), "pinned", d, "fp32", "ieee"))
            if candidates:
                out.append(variant(kname, table.pick(d, "16"), "pinned", d, "fp16"))
        out.append(variant(kname, table.pick(64, "16"), "pinned", 64, "bf16", int64=True))
        if kname == "onepass":
            continue  # no autotune space of its own
        space = fwd.autotune_configs(kname)
        chosen = {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) for c in space}
        for cfg in fwd.autotune_candidates() if candidates else space:
            bc = fwd.BlockConfig(cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], cfg.num_warps, cfg.num_stages)
            role = (
                "autotune" if (bc.block_m, bc.block_n, bc.num_warps, bc.num_stages) in chosen else "candidate"
            )
            for d in (64, 80):
                if bc != table.pick(d, "16"):  # the pinned one is built above
                    out.append(variant(kname, bc, role, d, "bf16"))
    return out


# ---------------------------------------------------------------------------------------------
def run(variants: list[Variant], verbose: bool) -> list[dict]:
    rows = []
    version = triton.__version__
    for v in variants:
        for target in v.targets:
            t0 = time.perf_counter()
            row = {"triton": version, "target": f"sm_{target}", "kernel": v.kernel.split(":")[1],
                   "role": v.role, "variant": v.variant, "dtype": v.dtype, "block": v.block,
                   "warps": v.num_warps, "stages": v.num_stages}  # fmt: skip
            try:
                ck = compile_variant(v, target)
                row.update(resources(ck, target, v.num_warps))
                row["status"] = status(row)
            except Exception as err:  # noqa: BLE001 -- a config that does not compile is a finding, recorded
                row["status"] = f"compile error: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
            row["compile_s"] = round(time.perf_counter() - t0, 2)
            rows.append(row)
            if verbose:
                print(" ".join(f"{row.get(k, '')}" for k in FIELDS[1:]), flush=True)
    return rows


KEY = ("triton", "target", "kernel", "role", "variant", "dtype", "block", "warps", "stages")
COMPARED = ("regs", "stack", "local", "spill_insts", "shared", "status")


def compare(rows: list[dict], table: Path) -> list[str]:
    """Differences between these rows and the committed table's rows for this Triton version."""
    committed = {}
    with open(table, newline="") as f:
        for r in csv.DictReader(f):
            if r["triton"] == triton.__version__:
                committed[tuple(r[k] for k in KEY)] = r
    diffs = []
    for r in rows:
        key = tuple(str(r[k]) for k in KEY)
        c = committed.get(key)
        if c is None:
            diffs.append(f"not in {table.name}: {' '.join(key)}")
            continue
        changed = [f"{k} {c[k]} -> {r.get(k, '')}" for k in COMPARED if str(r.get(k, "")) != c[k]]
        if changed:
            diffs.append(f"{' '.join(key[2:])}: " + ", ".join(changed))
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, help="CSV to write; rows of other Triton versions there are kept")
    parser.add_argument("--check", type=Path, help="compare with this committed CSV (this Triton's rows)")
    parser.add_argument("--candidates", action="store_true", help="also the wider autotune candidate space")
    parser.add_argument("--only", choices=("linear_bce", "attention"), help="one op's kernels")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    variants = []
    if args.only in (None, "linear_bce"):
        variants += linear_bce_variants(args.candidates)
    if args.only in (None, "attention"):
        variants += attention_variants(args.candidates)
    t0 = time.perf_counter()
    if not args.quiet:
        print(" ".join(FIELDS[1:]))
    rows = run(variants, verbose=not args.quiet)
    failed = [r for r in rows if r["status"] != "ok" and r["role"] != "candidate"]
    print(f"triton {triton.__version__}: {len(rows)} builds in {time.perf_counter() - t0:.0f} s, "
          f"{len(failed)} choosable configurations failing")  # fmt: skip
    for r in failed:
        print(f"  FAIL {r['target']} {r['kernel']} {r['block']} w{r['warps']} s{r['stages']} {r['dtype']} "
              f"{r['variant']}: {r['status']}")  # fmt: skip
    if args.out:
        keep = []
        if args.out.exists():
            with open(args.out, newline="") as f:
                keep = [r for r in csv.DictReader(f) if r["triton"] != triton.__version__]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(sorted(keep + rows, key=lambda r: tuple(str(r[k]) for k in KEY)))
        print(f"wrote {args.out}")
    diffs = compare(rows, args.check) if args.check else []
    for line in diffs:
        print(f"  DIFFERS from {args.check}: {line}")
    return 1 if failed or diffs else 0


if __name__ == "__main__":
    sys.exit(main())
