"""The paper's claim in miniature: CatLIP against CLIP (and SigLIP) on the same data and compute,
judged downstream.

    python perf/claim.py --quick      # 1 seed, short runs: under 10 minutes on the 2-core host
    python perf/claim.py              # 3 seeds, the committed results

Pre-training: the same image tower (``vit_tiny``: 64 px, patch 8, width 96, 4 blocks), the same
shards (the 255 COCO photos of ``../shared/data/coco_photos`` with their 1,275 captions, packed
once; the vocabulary is their own synsets seen in >= 5 captions), the same augmentation, seed,
batch (32 per rank, 2 gloo ranks), optimizer and schedule (configs/coco_tiny_cpu.yaml), with
``objective.name`` catlip, clip or siglip:
  * equal images seen: every objective runs ``--steps`` steps, with a checkpoint every
    ``--ckpt-every`` steps (the points of the mAP-against-time curve);
  * equal wall-clock: CLIP and SigLIP run again for as many steps as fit in CatLIP's pre-training
    time at their own measured speed (their own full schedule, not a cut one).
Pre-training time = steps x the run's median step time (log.jsonl; start-up and checkpoint
writes are left out, and the median resists the shared host's noise).

Downstream, every checkpoint is judged the same way on ``../shared/data/coco128`` (80 COCO
categories from YOLO labels, multi-label): a linear probe on the frozen tower's features
(class-token features after the final norm, the same layer for every objective) of the
train2017 images, trained identically for all (full-batch AdamW on the BCE, fixed steps, weight
decay and learning rate), scored by mAP on the val2017 images less those also in coco_photos.
Without training: CatLIP's zero-shot readout (the head's rows of each class's synsets, as
``catlip evaluate``) and CLIP's/SigLIP's zero-shot with their text tower on "a photo of a {name}".
CatLIP also gets the synset-initialised probe (the classifier starts from those head rows).

Results: ``perf/results/claim.csv`` (one row per run and checkpoint), ``claim.png`` (probe mAP
against pre-training time, mean and spread over seeds), ``claim.json`` (the summary: means and
standard deviations, the compute ratio at which CatLIP's probe mAP reaches CLIP's).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from perf.common import ROOT, commit, cpu_name  # noqa: E402

DATA = Path(os.environ.get("CATLIP_SHARED", ROOT.parent / "shared")) / "data"
OBJECTIVES = ("catlip", "clip", "siglip")
PROMPT = "a photo of a {}"
CATLIP = (sys.executable, "-m", "engine")  # the catlip command, without relying on PATH
FIELDS = [
    "date", "commit", "device", "seed", "objective", "budget", "steps", "step", "images_seen",
    "pretrain_s", "images_per_s", "probe_map", "synset_probe_map", "zero_shot_map", "chance",
    "eval_images", "classes",
]  # fmt: skip
# The probe: identical for every tower and checkpoint (full batch; features standardised with the
# train set's mean and std, so one learning rate suits every tower).
PROBE_STEPS, PROBE_LR, PROBE_WD = 300, 0.01, 1e-3


def sh(*cmd: str, log: Path | None = None, env: dict | None = None) -> None:
    """Run a command from the checkout; its output goes to ``log`` (shown on failure)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    out = open(log, "w") if log else subprocess.DEVNULL
    try:
        res = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    finally:
        if log:
            out.close()
    if res.returncode:
        tail = log.read_text()[-3000:] if log else ""
        raise SystemExit(f"claim: {' '.join(cmd[:6])} ... failed (exit {res.returncode})\n{tail}")


# ------------------------------------------------------------------------------------- data
def prepare(work: Path) -> dict[str, Path]:
    """Vocabulary, caption shards, class map and the two coco128 class packs (built once)."""
    d = work / "data"
    d.mkdir(parents=True, exist_ok=True)
    photos = DATA / "coco_photos"
    paths = {
        "vocab": d / "vocab.tsv",
        "pretrain": d / "pretrain",
        "classes": d / "classes.json",
        "train": d / "coco128-train",
        "val": d / "coco128-val",
    }
    if not paths["vocab"].is_file():
        print("[claim] vocabulary of the coco_photos captions (min count 5)", flush=True)
        sh(*CATLIP, "vocab", "--captions", str(photos / "captions.tsv"), "--min-count", "5",
           "--out", str(paths["vocab"]), log=d / "vocab.log")  # fmt: skip
    if not (paths["pretrain"] / "dataset.json").is_file():
        print("[claim] packing the 255 photos (all for pre-training)", flush=True)
        sh(*CATLIP, "pack", "--tsv", str(photos / "captions.tsv"), "--images", str(photos),
           "--vocab", str(paths["vocab"]), "--out", str(paths["pretrain"]), "--shard-size", "640",
           "--quiet", "--overwrite", log=d / "pack.log")  # fmt: skip
    if not paths["classes"].is_file():
        sh(*CATLIP, "classes", "--vocab", str(paths["vocab"]), "--names", str(DATA / "coco128" / "names.yaml"),
           "--allow-unmapped", "--out", str(paths["classes"]), log=d / "classes.log")  # fmt: skip
    for split, name, extra in (("train", "train2017", []), ("val", "val2017", ["--exclude", str(photos)])):
        if not (paths[split] / "dataset.json").is_file():
            print(f"[claim] packing coco128 {name}", flush=True)
            sh(*CATLIP, "pack", "--yolo", str(DATA / "coco128"), "--split", name, "--classes",
               str(paths["classes"]), *extra, "--out", str(paths[split]), "--quiet", "--overwrite",
               log=d / f"pack-{split}.log")  # fmt: skip
    return paths


# -------------------------------------------------------------------------------- pre-training
def pretrain(paths: dict, objective: str, seed: int, steps: int, ckpt_every: int, out: Path) -> dict:
    """One pre-training run (2 gloo ranks); its checkpoints and timing."""
    if not (out / "done.json").is_file():
        print(f"[claim] pre-training {objective}, seed {seed}, {steps} steps", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        sh(
            sys.executable, "-m", "engine.launch", "--nproc_per_node=2",
            "-m", "engine.train", "--config", str(ROOT / "configs/coco_tiny_cpu.yaml"),
            "--set", f"objective.name={objective}", "--set", f"data.train={paths['pretrain']}",
            "--set", "data.val=null", "--set", f"run.out_dir={out}", "--set", f"run.steps={steps}",
            "--set", f"run.seed={seed}", "--set", "run.log_every=1", "--set", f"checkpoint.every={ckpt_every}",
            "--set", "checkpoint.keep=1000", "--set", f"optim.warmup_steps={max(1, steps // 10)}",
            log=out / "train.log",
        )  # fmt: skip
        logs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        times = [e["step_time"] for e in logs if "step_time" in e]
        (out / "done.json").write_text(json.dumps({"median_step_s": statistics.median(times)}))
    median = json.loads((out / "done.json").read_text())["median_step_s"]
    ckpts = sorted(
        (p for p in (out / "checkpoints").glob("step_*") if (p / "complete.json").is_file()),
        key=lambda p: int(p.name.split("_")[1]),
    )
    return {"median_step_s": median, "checkpoints": ckpts, "batch": 64}


# -------------------------------------------------------------------------------- downstream
def load_tower(ckpt: Path, objective: str, classes: Path):
    """(model, tower, zero-shot scores(images) -> (B, C)) of a checkpoint. The tower's output (the
    class-token features after the final norm) is what the probe reads, for every objective.
    CatLIP: ``catlip evaluate``'s readout (engine.zeroshot, vocabulary hashes checked); CLIP and
    SigLIP: cosine similarity to the text tower's embedding of "a photo of a {name}"."""
    import torch

    if objective == "catlip":
        from engine.zeroshot import ZeroShotClassifier

        zs = ZeroShotClassifier.from_files(ckpt, classes, device="cpu")
        return zs.model, zs.model.encoder, zs.scores
    from catlip.clip import CLIPModel, clip_config
    from catlip.models import vit_config
    from catlip.tokenizer import tokenize
    from engine.checkpoint import consolidate

    state, meta = consolidate(ckpt)
    name = json.loads(meta["catlip_config"])["model"]["name"]
    clip = CLIPModel(clip_config(f"clip_{name}", siglip=objective == "siglip", vision=vit_config(name)))
    want = clip.state_dict()
    # the trainer wraps the model (``model.``) and holds the temperature as shape (1,)
    clip.load_state_dict(
        {k[6:]: v.reshape(want[k[6:]].shape) for k, v in state.items() if k.startswith("model.")}
    )
    clip.eval()
    names = [c["name"] for c in json.loads(Path(classes).read_text())["classes"]]
    with torch.no_grad():
        text = clip.encode_text(tokenize([PROMPT.format(n) for n in names]))  # (C, E)

    def scores(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return clip.encode_image(images) @ text.T  # (B, C)

    return clip, clip.visual, scores


def untrained_tower(seed: int):
    """The image tower as every run starts it (the trainer seeds with run.seed, then builds)."""
    import torch

    from catlip.models import VisionTransformer, vit_config

    torch.manual_seed(seed)
    return VisionTransformer(vit_config("vit_tiny")).eval()


def read_split(folder: Path, image_size: int) -> tuple[list, np.ndarray, list[str]]:
    """The eval-transformed image batches of a class pack, its (N, C) targets and keys."""
    import torch

    from engine.data import class_pack_loader

    loader, meta = class_pack_loader(folder, 64, image_size=image_size, device="cpu", num_threads=2)
    images, targets, keys = [], [], []
    for batch in loader:
        keep = batch["valid"].bool()
        images.append(batch["image"][keep])
        labels = batch["labels"][keep]
        t = torch.zeros(len(labels), int(meta["num_classes"]))
        for i, row in enumerate(labels):
            t[i, row[row >= 0]] = 1
        targets.append(t)
        keys += [k for k, ok in zip(batch["key"], keep.tolist(), strict=True) if ok]
    return images, torch.cat(targets).numpy(), keys


def features(tower, images: list) -> np.ndarray:
    import torch

    with torch.no_grad():
        return torch.cat([tower(x) for x in images]).numpy()


def probe(train_x, train_y, test_x, init: tuple | None = None) -> np.ndarray:
    """The linear probe (identical for every tower): scores of ``test_x``."""
    import torch

    torch.manual_seed(0)
    x, y = torch.from_numpy(train_x), torch.from_numpy(train_y)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    x, t = (x - mu) / sd, (torch.from_numpy(test_x) - mu) / sd
    if init is None:
        w = torch.zeros(y.shape[1], x.shape[1])
        prior = y.mean(0).clamp(1 / len(y), 1 - 1 / len(y))
        b = torch.log(prior / (1 - prior))
    else:  # a classifier over raw features, rewritten for the standardised ones
        w0, b0 = (torch.as_tensor(a, dtype=torch.float32) for a in init)
        w, b = w0 * sd, b0 + w0 @ mu
    w, b = w.clone().requires_grad_(), b.clone().requires_grad_()
    opt = torch.optim.AdamW([w, b], lr=PROBE_LR, weight_decay=PROBE_WD)
    for _ in range(PROBE_STEPS):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w.T + b, y)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return (t @ w.T + b).numpy()


def judge(ckpt: Path | None, objective: str, splits: dict, classes: Path, final: bool, seed: int = 0) -> dict:
    """Probe mAP of one checkpoint (None: the untrained tower); at the final one also the
    zero-shot and (CatLIP) synset-initialised probe mAPs."""
    import torch

    from engine.metrics import average_precision

    if ckpt is None:
        model, tower, scores = None, untrained_tower(seed), None
    else:
        model, tower, scores = load_tower(ckpt, objective, classes)
    (train_imgs, train_y, _), (val_imgs, val_y, _) = splits["train"], splits["val"]
    fx_train, fx_val = features(tower, train_imgs), features(tower, val_imgs)
    probe_map, chance, n_classes = average_precision(probe(fx_train, train_y, fx_val), val_y)
    row = {"probe_map": probe_map, "chance": chance, "classes": n_classes, "eval_images": len(val_y)}
    if not final or scores is None:
        return row
    row["zero_shot_map"] = average_precision(torch.cat([scores(x) for x in val_imgs]).numpy(), val_y)[0]
    if objective == "catlip":
        rows_of = [c["rows"] for c in json.loads(Path(classes).read_text())["classes"]]
        w = torch.stack([model.head.weight[r].mean(0) for r in rows_of]).detach()
        b = torch.stack([model.head.bias[r].mean() for r in rows_of]).detach()
        row["synset_probe_map"] = average_precision(probe(fx_train, train_y, fx_val, (w, b)), val_y)[0]
    return row


# -------------------------------------------------------------------------------- the study
def run_seed(paths: dict, seed: int, args: argparse.Namespace, splits: dict, classes: Path) -> list[dict]:
    """Every run of one seed (equal images, then equal wall-clock) and its judged checkpoints,
    and the untrained tower (the floor any pre-training must beat)."""
    rows = [{"seed": seed, "objective": "untrained", "budget": "-", "steps": 0, "step": 0, "images_seen": 0,
             "pretrain_s": 0.0, **judge(None, "catlip", splits, classes, final=False, seed=seed)}]  # fmt: skip
    runs = {}
    for objective in args.objectives:
        runs[(objective, "images")] = pretrain(
            paths, objective, seed, args.steps, args.ckpt_every, args.work / f"s{seed}" / objective
        )
    budget_s = args.steps * runs[("catlip", "images")]["median_step_s"]
    for objective in args.objectives:
        if objective == "catlip":
            continue
        steps = max(1, math.floor(budget_s / runs[(objective, "images")]["median_step_s"]))
        out = args.work / f"s{seed}" / f"{objective}-time"
        runs[(objective, "time")] = pretrain(paths, objective, seed, steps, steps, out)
    for (objective, budget), run in runs.items():
        ckpts = run["checkpoints"]
        for ckpt in ckpts:
            step = int(ckpt.name.split("_")[1])
            print(f"[claim] judging {objective} ({budget}) seed {seed} step {step}", flush=True)
            row = judge(ckpt, objective, splits, classes, final=ckpt == ckpts[-1], seed=seed)
            rows.append(
                {
                    "seed": seed, "objective": objective, "budget": budget,
                    "steps": int(ckpts[-1].name.split("_")[1]), "step": step,
                    "images_seen": step * run["batch"], "pretrain_s": step * run["median_step_s"],
                    "images_per_s": run["batch"] / run["median_step_s"], **row,
                }
            )  # fmt: skip
    return rows


def summarise(rows: list[dict], objectives: tuple) -> dict:
    """Means and spreads over seeds at the final checkpoints, and CatLIP's compute to match CLIP."""
    out: dict = {"probe": {}, "zero_shot": {}, "synset_probe": {}, "pretrain_s": {}, "steps": {}}
    for budget in ("images", "time"):
        for objective in objectives:
            final = [r for r in rows if r["objective"] == objective and r["step"] == r["steps"]
                     and (r["budget"] == budget or objective == "catlip")]  # fmt: skip
            if not final:
                continue
            key = f"{objective}@{budget}"
            for name, col in (("probe", "probe_map"), ("zero_shot", "zero_shot_map"),
                              ("synset_probe", "synset_probe_map"), ("pretrain_s", "pretrain_s"),
                              ("steps", "steps")):  # fmt: skip
                vals = [r[col] for r in final if r.get(col) not in (None, "")]
                if vals:
                    out[name][key] = {"mean": statistics.fmean(vals),
                                      "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}  # fmt: skip
    out["chance"] = statistics.fmean(r["chance"] for r in rows)
    floor = [r["probe_map"] for r in rows if r["objective"] == "untrained"]
    out["untrained_probe"] = {
        "mean": statistics.fmean(floor),
        "std": statistics.stdev(floor) if len(floor) > 1 else 0.0,
    }
    # CatLIP's probe mAP along its run (mean over seeds per checkpoint; the untrained tower at 0 s),
    # interpolated linearly, against CLIP's at the end of its run
    curve = [(0.0, out["untrained_probe"]["mean"]), *_curve(rows, "catlip", "images")]
    target = out["probe"].get("clip@images", {}).get("mean")
    clip_s = out["pretrain_s"].get("clip@images", {}).get("mean")
    out["catlip_curve"], out["match"] = curve, None
    out["untrained_reaches_clip"] = target is not None and curve[0][1] >= target
    if target is not None and clip_s and not out["untrained_reaches_clip"]:
        for (t0, m0), (t1, m1) in zip(curve[:-1], curve[1:], strict=True):
            if m1 >= target:
                t = t1 if m1 == m0 else t0 + (target - m0) * (t1 - t0) / (m1 - m0)
                out["match"] = {"catlip_s": t, "clip_s": clip_s, "ratio": t / clip_s, "between_s": [t0, t1]}
                break
    return out


def _curve(rows: list[dict], objective: str, budget: str) -> list[tuple[float, float]]:
    by_step: dict[int, list[dict]] = {}
    for r in rows:
        if r["objective"] == objective and r["budget"] == budget:
            by_step.setdefault(r["step"], []).append(r)
    return [
        (statistics.fmean(r["pretrain_s"] for r in rs), statistics.fmean(r["probe_map"] for r in rs))
        for _, rs in sorted(by_step.items())
    ]


def plot(rows: list[dict], objectives: tuple, path: Path) -> None:
    """Probe mAP against pre-training time, mean over seeds with the min-max spread (PIL only)."""
    from PIL import Image, ImageDraw

    colors = {"catlip": (214, 39, 40), "clip": (31, 119, 180), "siglip": (44, 160, 44)}
    width, height, left, right, top, bottom = 760, 480, 70, 150, 30, 60
    series = {}
    for objective in objectives:
        pts = []
        by_step: dict[int, list[dict]] = {}
        for r in rows:
            if r["objective"] == objective and r["budget"] == "images":
                by_step.setdefault(r["step"], []).append(r)
        for _, rs in sorted(by_step.items()):
            maps = [r["probe_map"] for r in rs]
            pts.append(
                (statistics.fmean(r["pretrain_s"] for r in rs), statistics.fmean(maps), min(maps), max(maps))
            )
        series[objective] = pts
    chance = statistics.fmean(r["chance"] for r in rows)
    xs = [p[0] for pts in series.values() for p in pts] + [0.0]
    ys = (
        [v for pts in series.values() for p in pts for v in p[1:]]
        + [chance]
        + [r["probe_map"] for r in rows if r["objective"] == "untrained"]
    )
    x_max, y_lo, y_hi = max(xs) * 1.05, min(ys) * 0.95, max(ys) * 1.05
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)

    def xy(x: float, y: float) -> tuple[float, float]:
        return (left + x / x_max * (width - left - right),
                height - bottom - (y - y_lo) / (y_hi - y_lo) * (height - top - bottom))  # fmt: skip

    d.rectangle([left, top, width - right, height - bottom], outline="black")
    for i in range(6):
        y = y_lo + i * (y_hi - y_lo) / 5
        d.text((8, xy(0, y)[1] - 6), f"{100 * y:.1f}%", fill="black")
        x = i * x_max / 5
        d.text((xy(x, y_lo)[0] - 10, height - bottom + 6), f"{x:.0f}", fill="black")
    d.text((left + 150, height - 25), "pre-training time (s, 2 CPU gloo ranks)", fill="black")
    d.text((left, 8), "coco128 linear-probe mAP (val2017 less coco_photos)", fill="black")
    d.line([xy(0, chance), xy(x_max, chance)], fill=(150, 150, 150))
    floor = statistics.fmean(r["probe_map"] for r in rows if r["objective"] == "untrained")
    d.line([xy(0, floor), xy(x_max, floor)], fill=(90, 90, 90))
    d.text((width - right + 8, xy(0, floor)[1] - 6), "untrained tower", fill=(90, 90, 90))
    d.text((width - right + 8, xy(0, chance)[1] - 6), "chance", fill=(120, 120, 120))
    for n, (objective, pts) in enumerate(series.items()):
        c = colors.get(objective, (0, 0, 0))
        for x, _, lo, hi in pts:
            d.line([xy(x, lo), xy(x, hi)], fill=c, width=1)
        d.line([xy(x, m) for x, m, _, _ in pts], fill=c, width=2)
        for x, m, _, _ in pts:
            cx, cy = xy(x, m)
            d.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=c)
        d.text((width - right + 8, top + 16 * n), objective, fill=c)
    img.save(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 seed, 60 steps, checkpoints every 20 (< 10 min)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=100, help="pre-training steps at equal images seen")
    p.add_argument("--ckpt-every", type=int, default=25, help="points of the mAP-against-time curve")
    p.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=OBJECTIVES)
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "claim", help="runs and packs (reused)")
    p.add_argument("--out", type=Path, default=ROOT / "perf" / "results", help="claim.csv/png/json go here")
    args = p.parse_args()
    if "catlip" not in args.objectives:
        p.error("--objectives must include catlip (the others are compared with it)")
    if args.quick:
        args.seeds, args.steps, args.ckpt_every = args.seeds[:1], 60, 20
        args.work = args.work.with_name(args.work.name + "-quick")
        if args.out == ROOT / "perf" / "results":  # the committed results are the full run's
            args.out = args.work / "results"
    for needed in (DATA / "coco_photos" / "captions.tsv", DATA / "coco128" / "names.yaml"):
        if not needed.is_file():
            raise SystemExit(f"claim: {needed} is missing: the study needs ../shared/data (see its README)")
    start = time.perf_counter()
    paths = prepare(args.work)
    from catlip.models import vit_config

    size = vit_config("vit_tiny").image_size
    splits = {s: read_split(paths[s], size) for s in ("train", "val")}
    rows = []
    for seed in args.seeds:
        rows += run_seed(paths, seed, args, splits, paths["classes"])
    stamp = {"date": datetime.date.today().isoformat(), "commit": commit(),
             "device": f"{cpu_name()}, 2 gloo ranks x 1 thread"}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    import csv

    with open(args.out / "claim.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({**stamp, **{k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()}})
    summary = {**stamp, "seeds": args.seeds, "steps": args.steps, **summarise(rows, tuple(args.objectives)),
               "wall_s": time.perf_counter() - start}  # fmt: skip
    (args.out / "claim.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(rows, tuple(args.objectives), args.out / "claim.png")
    print(report(summary))
    print(f"wrote {args.out}/claim.csv, claim.json, claim.png in {summary['wall_s'] / 60:.1f} min")


def report(s: dict) -> str:
    def cell(table: str, key: str) -> str:
        v = s[table].get(key)
        return "-" if v is None else f"{100 * v['mean']:.2f} +- {100 * v['std']:.2f}%"

    lines = [f"chance mAP {100 * s['chance']:.2f}% ({len(s['seeds'])} seed(s))",
             f"{'run':<16} {'steps':>6} {'pretrain s':>10} {'probe':>16} {'zero-shot':>16} {'synset probe':>16}"]  # fmt: skip
    for key in s["probe"]:
        steps = s["steps"].get(key, {}).get("mean", float("nan"))
        secs = s["pretrain_s"].get(key, {}).get("mean", float("nan"))
        lines.append(f"{key:<16} {steps:>6.0f} {secs:>10.1f} {cell('probe', key):>16} "
                     f"{cell('zero_shot', key):>16} {cell('synset_probe', key):>16}")  # fmt: skip
    u = s["untrained_probe"]
    lines.append(
        f"{'untrained tower':<16} {0:>6} {0:>10.1f} {100 * u['mean']:>9.2f} +- {100 * u['std']:.2f}%"
    )
    m = s.get("match")
    if s.get("untrained_reaches_clip"):
        lines.append(
            "the untrained tower already probes as well as CLIP's final one: no pre-training gain to compare, no ratio"
        )
    elif m:
        lines.append(f"CatLIP's probe mAP reaches CLIP's final one after ~{m['catlip_s']:.1f} s of pre-training "
                     f"(interpolated between its checkpoints at {m['between_s'][0]:.1f} and {m['between_s'][1]:.1f} s) "
                     f"against CLIP's {m['clip_s']:.1f} s: {m['ratio']:.2f}x the compute (paper: 0.37x)")  # fmt: skip
    else:
        lines.append("CatLIP's probe mAP does not reach CLIP's within the budget")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
