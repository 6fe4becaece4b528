"""Captions per second per core of the caption -> synset labelers, side by side in one run.

Providers (one process, one core, the same captions):
  nltk-eager              plain NLTK as the official code calls it: word_tokenize, pos_tag, a fresh
                          WordNetLemmatizer lookup and wn.synset per token, no caches (POS filter)
  catlip-2                this engine's default (catlip.senses), fitted on the caption files first
                          (as ``catlip vocab`` fits it; the fit's own rate is its row's fit column)
  catlip-2+no-pos-filter  the same without the POS filter
  catlip-1                this engine's first labeler, with the POS filter
  catlip-1+no-pos-filter  the same without the tagger
  corenet                 this engine reproducing the official code (its cleaning, no POS filter)

Each is timed by process CPU time after a warm-up pass over a different slice (so per-token
caches start warm on common words, as they are after the first minutes of a real run), and split
into stages (clean + sentence split + tokenise, tag, the rest: WordNet lookups or, for catlip-2,
compounds and sense choice) to say what limits it. ``startup_s`` is the wall time of a fresh
``python`` process from its start to its first labelled caption (imports, WordNet, the tagger,
catlip-2's sense table read from its file). Rows are appended to perf/results/labeler.csv with
the CPU, commit and date.

    python perf/bench_labeler.py [--captions FILE ...] [--n 10000]
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the perf package sits at the root
from perf.common import append_rows, commit, cpu_name  # noqa: E402

DEFAULT = ROOT.parent / "shared" / "data" / "coco_captions_val2017.json"


def cpu_time(fn, items) -> float:
    start = time.process_time()
    for item in items:
        fn(item)
    return time.process_time() - start


def nltk_eager():
    import nltk
    from nltk.corpus import wordnet as wn
    from nltk.stem import WordNetLemmatizer

    from catlip.text import clean_caption

    def label(caption):
        tokens = nltk.word_tokenize(clean_caption(caption), preserve_line=True)
        out = []
        for word, tag in nltk.pos_tag(tokens):
            if not tag.startswith("NN"):
                continue
            lemma = WordNetLemmatizer().lemmatize(word)
            try:
                synset = wn.synset(f"{lemma}.n.01")
            except Exception:  # noqa: BLE001 - as the official code does
                continue
            if synset.name() == f"{lemma}.n.01":
                out.append(synset.offset())
        return out

    return label


def stages(labeler, captions) -> dict[str, float]:
    """Per-caption CPU microseconds of each stage of a catlip labeler."""
    from catlip.text import split_sentences, word_tokenize

    def tokenize(caption):
        return [word_tokenize(s) for s in split_sentences(labeler.clean(caption))]

    sentences = [tokenize(c) for c in captions]
    t_tok = cpu_time(tokenize, captions)
    t_tag = 0.0
    if labeler.pos_filter:
        tag = labeler._tagger.tag
        t_tag = cpu_time(lambda sents: [tag(s) for s in sents], sentences)
    t_all = cpu_time(labeler.synsets, captions)
    n = len(captions)
    return {
        k: 1e6 * v / n for k, v in {"tokenize": t_tok, "tag": t_tag, "rest": t_all - t_tok - t_tag}.items()
    }


STARTUP = """
import sys, time
start = float(sys.argv[1])
from catlip.labels import LabelerSpec, load_senses, make_labeler
spec = LabelerSpec.parse(sys.argv[2])
senses = None
if sys.argv[3]:
    from catlip.senses import SenseTable
    senses = SenseTable.load(sys.argv[3])
make_labeler(spec, senses).synsets("A dog catches a frisbee in the park.")
print(time.time() - start)
"""


def startup_seconds(name: str, table_path: str = "") -> float:
    """Wall seconds from a fresh interpreter's start to its first labelled caption (median of 3)."""
    runs = []
    for _ in range(3):
        start = time.time()
        out = subprocess.run(
            [sys.executable, "-c", STARTUP, str(start), name, table_path],
            capture_output=True, text=True, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        runs.append(float(out.stdout.split()[-1]))
    return sorted(runs)[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--captions", nargs="+", type=Path, default=[DEFAULT])
    parser.add_argument("--n", type=int, default=10_000, help="captions timed per provider")
    parser.add_argument("--out", type=Path, default=ROOT / "perf" / "results" / "labeler.csv")
    args = parser.parse_args()

    import tempfile
    import warnings

    from catlip.captions import iter_captions
    from catlip.labels import make_labeler
    from catlip.senses import SenseLabeler

    warnings.simplefilter("ignore")
    captions = [c for path in args.captions for _, c in iter_captions(path)]
    warm, timed = captions[-2000:], captions[: args.n]
    rows = []
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    print(f"{len(timed):,} captions timed, fits on all {len(captions):,}; 1 process, CPU: {cpu_name()}")
    print(
        f"{'provider':<24} {'captions/s/core':>16} {'us/caption':>11} {'startup s':>9}  stages (us/caption)"
    )
    tmp = Path(tempfile.mkdtemp(prefix="bench-labeler-"))
    for name in [
        "nltk-eager",
        "catlip-2",
        "catlip-2+no-pos-filter",
        "catlip-1",
        "catlip-1+no-pos-filter",
        "corenet",
    ]:
        fit_rate, table_path = None, ""
        if name == "nltk-eager":
            fn, labeler = nltk_eager(), None
        else:
            table = None
            if name.startswith("catlip-2"):
                start = time.process_time()
                table = SenseLabeler(pos_filter="+" not in name).fit_counts(captions).table()
                fit_rate = len(captions) / (time.process_time() - start)
                table_path = str(tmp / f"{name}.json")
                table.save(table_path)
            labeler = make_labeler(name, table)
            fn = labeler.synsets
        cpu_time(fn, warm)
        seconds = cpu_time(fn, timed)
        rate = len(timed) / seconds
        split = stages(labeler, timed) if labeler is not None else {}
        startup = startup_seconds(name, table_path) if labeler is not None else float("nan")
        shown = " ".join(f"{k}={v:.0f}" for k, v in split.items())
        fit = f" (fit: {fit_rate:,.0f} captions/s)" if fit_rate else ""
        print(f"{name:<24} {rate:>16,.0f} {1e6 / rate:>11.0f} {startup:>9.1f}  {shown}{fit}")
        rows.append(
            {
                "date": stamp,
                "commit": commit(),
                "device": cpu_name(),
                "provider": name,
                "captions": len(timed),
                "captions_per_s_per_core": round(rate),
                "us_per_caption": round(1e6 / rate, 1),
                **{f"us_{k}": round(v, 1) for k, v in split.items()},
                "startup_s": round(startup, 2),
                "fit_captions_per_s": round(fit_rate) if fit_rate else "",
            }
        )
    fields = ["date", "commit", "device", "provider", "captions", "captions_per_s_per_core", "us_per_caption"]
    fields += ["us_clean", "us_tokenize", "us_tag", "us_lookup", "us_rest", "startup_s", "fit_captions_per_s"]
    append_rows(args.out, fields, rows)
    print(f"appended to {args.out}")


if __name__ == "__main__":
    main()
