"""The main job's closing summary (``scripts/run_main.sh``): the transfer folder's results in one block.

The folder is what the job's transfer steps write (``runs/main/<run>/transfer``):

- ``zeroshot.txt``: ``catlip evaluate``'s output, whose last line is its summary
  (``mAP 11.97% over 71 classes (119 images); chance 4.05%``);
- ``val/dataset.json``: the class pack of the scored images (``source.excluded.images``: the
  pre-training photos left out);
- ``{probe,finetune}_{random,synset}/``: the four transfer runs, each with ``config.json`` (its
  ``run.steps``) and ``eval.jsonl`` (one line per held-out evaluation: ``step``, ``val_mAP``,
  ``chance_mAP``).

``python -m engine.main_job TRANSFER PRETRAIN_LINE SECONDS`` prints the block.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

TASKS = (("probe", "linear probe"), ("finetune", "fine-tune"))
INITS = ("random", "synset")
# About one point of mAP separates seeds on the 119 held-out images (perf/claim.py): a smaller gap
# between the two initialisations is a tie.
TIE_POINTS = 1.0


@dataclass(frozen=True)
class TransferRun:
    """One transfer run's held-out evaluations: its steps and the mAP (%) at each evaluation."""

    steps: int
    curve: dict[int, float]  # evaluation step -> held-out mAP, percent
    final_map: float  # percent
    final_chance: float  # percent

    @classmethod
    def read(cls, run: Path) -> TransferRun:
        steps = json.loads((run / "config.json").read_text())["run"]["steps"]
        evals = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines() if line.strip()]
        last = evals[-1]
        return cls(
            steps=steps,
            curve={e["step"]: 100 * e["val_mAP"] for e in evals},
            final_map=100 * last["val_mAP"],
            final_chance=100 * last["chance_mAP"],
        )


def _percent(text: str, word: str) -> float:
    return float(re.search(word + r" ([0-9.]+)%", text).group(1))


def verdict(random_map: float, synset_map: float) -> str:
    """How the synset initialisation did against the random one, in words."""
    diff = synset_map - random_map
    return "tied with" if abs(diff) < TIE_POINTS else ("beat" if diff > 0 else "fell behind")


def summary(folder: str | Path, pretrain: str, seconds: int) -> str:
    """The summary block of the transfer ``folder``, with the pre-training's held-out line
    ``pretrain`` (empty: none) and the job's ``seconds`` after set-up."""
    folder = Path(folder)
    zeroshot = (folder / "zeroshot.txt").read_text().strip().splitlines()[-1]
    source = json.loads((folder / "val" / "dataset.json").read_text())["source"]
    excluded = source.get("excluded", {}).get("images", "?")
    images = re.search(r"\((\d+) images", zeroshot)
    label = "zero-shot synset readout (no training)"
    rows = [
        f"  {label:<48} mAP {_percent(zeroshot, 'mAP'):6.2f}%   chance {_percent(zeroshot, 'chance'):.2f}%"
    ]
    verdicts, curves = [], []
    for task, what in TASKS:
        runs = {init: TransferRun.read(folder / f"{task}_{init}") for init in INITS}
        for init, run in runs.items():
            label = f"{what}, classifier_init {init}, {run.steps} steps"
            rows.append(f"  {label:<48} mAP {run.final_map:6.2f}%   chance {run.final_chance:.2f}%")
        diff = runs["synset"].final_map - runs["random"].final_map
        said = verdict(runs["random"].final_map, runs["synset"].final_map)
        verdicts.append(f"{what}: synset initialisation {said} random ({diff:+.2f} points)")
        random_curve, synset_curve = runs["random"].curve, runs["synset"].curve
        curves.append(
            f"{what} (step: random / synset): "
            + ", ".join(f"{s}: {random_curve[s]:.1f} / {synset_curve[s]:.1f}" for s in sorted(random_curve))
        )
    nl = "\n"
    return f"""
================================ main job summary ================================
pre-training (coco_photos, vocabulary): {pretrain or "no held-out line"}
transfer to COCO's 80 classes, scored on coco128 val2017 less the {excluded} pre-training photos
({images.group(1) if images else "?"} images), mAP over the classes with a positive; trained on train2017 (128 images):
{nl.join(rows)}
{nl.join(verdicts)}
held-out mAP along the way:
{nl.join("  " + c for c in curves)}
(details in {folder})
main job: {int(seconds)} s after set-up
=================================================================================="""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print("usage: python -m engine.main_job TRANSFER_FOLDER PRETRAIN_LINE SECONDS", file=sys.stderr)
        return 2
    folder, pretrain, seconds = args
    print(summary(folder, pretrain, int(seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
