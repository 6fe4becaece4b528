"""Captions per second per core of the caption -> synset labeler, side by side in one run.

Providers (one process, one core, the same captions):
  nltk-eager      plain NLTK as the official code calls it: word_tokenize, pos_tag, a fresh
                  WordNetLemmatizer lookup and wn.synset per token, no caches (with the POS filter)
  catlip          this engine, with the POS filter (the default)
  catlip-nofilter this engine without the POS filter (no tagger)
  official        this engine reproducing corenet (its cleaning, sentence split, no POS filter)

Each is timed by process CPU time after a warm-up pass over a different slice (so per-token
caches start warm on common words, as they are after the first minutes of a real run), and split
into stages (clean, sentence split + tokenise, tag, WordNet lookup) to say what limits it. Rows are appended to
perf/results/labeler.csv with the CPU, commit and date.

    python perf/bench_labeler.py [--captions FILE ...] [--n 10000]
"""

from __future__ import annotations

import argparse
import datetime
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
    """Per-caption CPU microseconds of each stage of the catlip labeler."""
    from catlip.text import clean_caption, split_sentences, word_tokenize

    def tokenize(text):
        return [word_tokenize(s) for s in split_sentences(text)]

    texts = [clean_caption(c) for c in captions]
    t_clean = cpu_time(clean_caption, captions)
    sentences = [tokenize(t) for t in texts]
    t_tok = cpu_time(tokenize, texts)
    if labeler.pos_filter:
        tag = labeler._tagger.tag
        t_tag = cpu_time(lambda sents: [tag(s) for s in sents], sentences)
    else:
        t_tag = 0.0
    nouns = [labeler.nouns(c) for c in captions]
    t_lookup = cpu_time(lambda ns: [labeler.synset_of(n) for n in ns], nouns)
    n = len(captions)
    return {
        k: 1e6 * v / n
        for k, v in {"clean": t_clean, "tokenize": t_tok, "tag": t_tag, "lookup": t_lookup}.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--captions", nargs="+", type=Path, default=[DEFAULT])
    parser.add_argument("--n", type=int, default=10_000, help="captions timed per provider")
    parser.add_argument("--out", type=Path, default=ROOT / "perf" / "results" / "labeler.csv")
    args = parser.parse_args()

    import warnings

    from catlip.captions import iter_captions
    from catlip.labels import CaptionLabeler

    warnings.simplefilter("ignore")
    captions = [c for path in args.captions for _, c in iter_captions(path)]
    warm, timed = captions[-2000:], captions[: args.n]
    providers = {
        "nltk-eager": nltk_eager(),
        "catlip": CaptionLabeler().synsets,
        "catlip-nofilter": CaptionLabeler(pos_filter=False).synsets,
        "official": CaptionLabeler(official=True).synsets,
    }
    rows = []
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    print(f"{len(timed):,} captions, 1 process, CPU: {cpu_name()}")
    print(f"{'provider':<16} {'captions/s/core':>16} {'us/caption':>11}  stages (us/caption)")
    for name, fn in providers.items():
        cpu_time(fn, warm)
        seconds = cpu_time(fn, timed)
        rate = len(timed) / seconds
        split = stages(fn.__self__, timed) if name.startswith("catlip") else {}
        shown = " ".join(f"{k}={v:.0f}" for k, v in split.items())
        print(f"{name:<16} {rate:>16,.0f} {1e6 / rate:>11.0f}  {shown}")
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
            }
        )
    fields = ["date", "commit", "device", "provider", "captions", "captions_per_s_per_core", "us_per_caption"]
    fields += ["us_clean", "us_tokenize", "us_tag", "us_lookup"]
    append_rows(args.out, fields, rows)
    print(f"appended to {args.out}")


if __name__ == "__main__":
    main()
