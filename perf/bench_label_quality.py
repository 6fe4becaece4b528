"""How well caption labels name what is in the picture, scored against human object annotations.

CatLIP learns from nothing but the synsets its labeler reads off the captions, so the labels are
measured like any other result: against COCO's human object annotations (image-level categories,
from the instance annotations) of val2017 images, with all 5 captions of each image pooled (the
union of their labels), per labeler.

Data (from ``../shared/data``, never copied into the repository):
  dev      ``coco_val2017_categories_dev.json`` (2,547 val2017 images -> their COCO categories) with
           their captions in ``coco_captions_val2017.json``
  coco128  the 128 coco128 val2017 images, categories from their YOLO labels (a quick run)

The categories are scored through :data:`CATEGORY_SENSES`, a hand-checked table of the WordNet 3.0
noun synsets that each of the 80 categories names: the physical sense where the word has several
(kite.n.03 the plaything, not kite.n.01 the bank check; book.n.02 the bound pages;
television_receiver.n.01, not the broadcasting), more than one where the category covers several
(a bowl as a vessel and as a dish). It is never derived from ``catlip classes`` or any labeler,
which are under test.

Metrics, per labeler (an image's labels: the union over its captions):
  recall            annotated (image, category) pairs whose category sense, or a hyponym of it,
                    is among the image's labels
  recall_hypernym   the same, also counting the category sense's direct hypernym (a caption's
                    "table" for a dining table, table.n.03)
  multiword_wrong   of the (image, category) pairs of multi-word categories (hot dog, teddy bear,
                    tennis racket, ...), the share whose image carries a sense of the head noun
                    (dog, bear, racket) that is neither a category sense, a hyponym nor an ancestor
                    of one, and falls under no category annotated in that image (dog.n.01 for a
                    hot dog with no dog in the picture)
  false_object      of the image labels that are a category sense or a hyponym of one, the share
                    whose categories are none of them annotated in that image
  non_physical      share of the image labels not under physical_entity.n.01
  labels_per_image  mean size of the image label sets
  captions_per_s    labelling speed in this run (process CPU time, one core, no warm-up: for
                    speed, perf/bench_labeler.py is the measurement)
  named_zero_recall categories some caption of their images names (name or synonym) that the
                    labeler never finds

catlip-2 is fitted (its corpus sense table) on all 25,014 val2017 captions, as the main job's
vocabulary is (``--fit-captions``): the same unsupervised step for the dev images and for any
other val2017 images scored with ``--categories``; no annotation is read by any labeler.

Captions do not mention every annotated object (a cup on a far table, a person in the
background), so recall has a ceiling well below 100%. It is computed on the same images and
printed with the rows: ``said`` is the share of annotated pairs where some caption says the
category's name or a lemma of one of its senses (a WordNet synonym: "sofa" for couch), the
reach of a context-free WordNet labeler; ``said_hyponym`` also counts a lemma of a hyponym
("man" for person, "puppy" for dog), which is what hyponym-counting recall could at most find.
A word counts as said when the caption's tokens, one word or several adjacent ones (joined by
"_" or written as one word), reduce to the lemma by WordNet's noun morphology.

Rows go to perf/results/label_quality.csv (one per labeler and data set) and the per-category
recall to perf/results/label_quality_categories.csv, with the date and commit.

    python perf/bench_label_quality.py [--data dev coco128] [--labelers catlip-2 catlip-1 corenet] [--ablations]
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the perf package sits at the root
from perf.common import append_rows, commit  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"

# The 80 COCO categories -> the WordNet 3.0 noun synsets they name, checked by hand against each
# synset's gloss. A category whose word has no physical sense in WordNet keeps the sense it has
# (traffic_light.n.01 is a visual signal; sign.n.02, a public display of a message, is what a
# stop sign is, and signboard.n.01 the physical board).
CATEGORY_SENSES: dict[str, tuple[str, ...]] = {
    "person": ("person.n.01",),
    "bicycle": ("bicycle.n.01",),
    "car": ("car.n.01",),
    "motorcycle": ("motorcycle.n.01",),
    "airplane": ("airplane.n.01",),
    "bus": ("bus.n.01",),
    "train": ("train.n.01",),
    "truck": ("truck.n.01",),
    "boat": ("boat.n.01",),
    "traffic light": ("traffic_light.n.01",),
    "fire hydrant": ("fireplug.n.01",),
    "stop sign": ("sign.n.02", "signboard.n.01"),
    "parking meter": ("parking_meter.n.01",),
    "bench": ("bench.n.01",),
    "bird": ("bird.n.01",),
    "cat": ("cat.n.01",),
    "dog": ("dog.n.01",),
    "horse": ("horse.n.01",),
    "sheep": ("sheep.n.01",),
    "cow": ("cattle.n.01",),  # COCO's cows are cattle: cows, bulls, oxen, calves
    "elephant": ("elephant.n.01",),
    "bear": ("bear.n.01",),
    "zebra": ("zebra.n.01",),
    "giraffe": ("giraffe.n.01",),
    "backpack": ("backpack.n.01",),
    "umbrella": ("umbrella.n.01",),
    "handbag": ("bag.n.04",),
    "tie": ("necktie.n.01",),
    "suitcase": ("bag.n.06",),
    "frisbee": ("frisbee.n.01",),
    "skis": ("ski.n.01",),
    "snowboard": ("snowboard.n.01",),
    "sports ball": ("ball.n.01",),
    "kite": ("kite.n.03",),
    "baseball bat": ("baseball_bat.n.01",),
    "baseball glove": ("baseball_glove.n.01",),
    "skateboard": ("skateboard.n.01",),
    "surfboard": ("surfboard.n.01",),
    "tennis racket": ("tennis_racket.n.01",),
    "bottle": ("bottle.n.01",),
    "wine glass": ("wineglass.n.01",),
    "cup": ("cup.n.01",),
    "fork": ("fork.n.01",),
    "knife": ("knife.n.01",),
    "spoon": ("spoon.n.01",),
    "bowl": ("bowl.n.01", "bowl.n.03"),
    "banana": ("banana.n.02",),
    "apple": ("apple.n.01",),
    "sandwich": ("sandwich.n.01",),
    "orange": ("orange.n.01",),
    "broccoli": ("broccoli.n.02", "broccoli.n.01"),
    "carrot": ("carrot.n.03", "carrot.n.01"),
    "hot dog": ("hotdog.n.02", "frank.n.02"),  # the sandwich, and the sausage in it
    "pizza": ("pizza.n.01",),
    "donut": ("doughnut.n.02",),
    "cake": ("cake.n.03",),
    "chair": ("chair.n.01",),
    "couch": ("sofa.n.01",),
    "potted plant": ("pot_plant.n.01", "houseplant.n.01"),
    "bed": ("bed.n.01",),
    "dining table": ("dining_table.n.01",),
    "toilet": ("toilet.n.02",),
    "tv": ("television_receiver.n.01",),
    "laptop": ("laptop.n.01",),
    "mouse": ("mouse.n.04",),
    "remote": ("remote_control.n.01",),
    "keyboard": ("keyboard.n.01",),
    "cell phone": ("cellular_telephone.n.01",),
    "microwave": ("microwave.n.02",),
    "oven": ("oven.n.01",),
    "toaster": ("toaster.n.02",),
    "sink": ("sink.n.01",),
    "refrigerator": ("refrigerator.n.01",),
    "book": ("book.n.02",),
    "clock": ("clock.n.01",),
    "vase": ("vase.n.01",),
    "scissors": ("scissors.n.01",),
    "teddy bear": ("teddy.n.01",),
    "hair drier": ("hand_blower.n.01",),
    "toothbrush": ("toothbrush.n.01",),
}


# ------------------------------------------------------------------------------------------ data
@dataclass(frozen=True)
class Image:
    id: int
    categories: frozenset[str]
    captions: tuple[str, ...]


def _captions_by_image(path: Path) -> dict[int, list[str]]:
    raw = json.loads(path.read_text())
    out: dict[int, list[str]] = defaultdict(list)
    for ann in raw["annotations"]:
        out[int(ann["image_id"])].append(ann["caption"])
    return out


def load_dev(data: Path = SHARED, categories: Path | None = None) -> list[Image]:
    """The dev images (or another image -> categories JSON of val2017 ids) with their captions."""
    cats = json.loads((categories or data / "coco_val2017_categories_dev.json").read_text())
    captions = _captions_by_image(data / "coco_captions_val2017.json")
    return [
        Image(int(k), frozenset(v), tuple(captions[int(k)]))
        for k, v in sorted(cats.items(), key=lambda kv: int(kv[0]))
        if captions.get(int(k))
    ]


def load_coco128(data: Path = SHARED) -> list[Image]:
    """coco128's val2017 images, categories from their YOLO labels (an image without objects has none)."""
    import yaml

    root = data / "coco128"
    names = yaml.safe_load((root / "names.yaml").read_text())["names"]
    captions = _captions_by_image(data / "coco_captions_val2017.json")
    out = []
    for path in sorted((root / "images" / "val2017").glob("*.jpg")):
        label = root / "labels" / "val2017" / f"{path.stem}.txt"
        ids = (
            {int(line.split()[0]) for line in label.read_text().splitlines() if line.strip()}
            if label.exists()
            else set()
        )
        out.append(Image(int(path.stem), frozenset(names[i] for i in ids), tuple(captions[int(path.stem)])))
    return out


DATASETS: dict[str, Callable[[], list[Image]]] = {"dev": load_dev, "coco128": load_coco128}


# --------------------------------------------------------------------------------------- WordNet
class Taxonomy:
    """Memoised WordNet lookups the scoring needs: synsets by wnid, ancestor closures."""

    def __init__(self) -> None:
        from catlip.nltk_resources import wordnet

        self.wn = wordnet()
        self._synsets: dict[str, object] = {}
        self._ancestors: dict[object, frozenset] = {}
        self.physical = self.wn.synset("physical_entity.n.01")
        self.senses = {c: tuple(self.wn.synset(n) for n in names) for c, names in CATEGORY_SENSES.items()}

    def synset(self, key: str):
        if key not in self._synsets:
            self._synsets[key] = self.wn.synset_from_pos_and_offset("n", int(key[1:]))
        return self._synsets[key]

    def ancestors(self, synset) -> frozenset:
        """Every hypernym and instance hypernym of ``synset``, transitively (not itself)."""
        if synset not in self._ancestors:
            out: set = set()
            for h in synset.hypernyms() + synset.instance_hypernyms():
                out.add(h)
                out |= self.ancestors(h)
            self._ancestors[synset] = frozenset(out)
        return self._ancestors[synset]

    def under(self, synset, targets: Iterable) -> bool:
        """``synset`` is one of ``targets`` or a hyponym of one."""
        targets = set(targets)
        return synset in targets or not targets.isdisjoint(self.ancestors(synset))

    def categories_of(self, synset) -> frozenset[str]:
        """The categories whose senses ``synset`` is, or is a hyponym of."""
        return frozenset(c for c, senses in self.senses.items() if self.under(synset, senses))


# --------------------------------------------------------------------------------------- scoring
def image_labels(label: Callable[[str], list[str]], images: list[Image]) -> tuple[list[set[str]], float]:
    """Each image's label set (union over its captions), and the CPU seconds the labelling took."""
    start = time.process_time()
    out = [{k for caption in image.captions for k in label(caption)} for image in images]
    return out, time.process_time() - start


def score(images: list[Image], labels: list[set[str]], tax: Taxonomy) -> dict:
    """The metrics of the module docstring, and per-category recall ({category: [hits, pairs]})."""
    per_cat = {c: [0, 0] for c in CATEGORY_SENSES}
    hits = hits_hyper = pairs = mw_pairs = mw_wrong = 0
    under_cat = false_obj = n_labels = non_physical = 0
    for image, keys in zip(images, labels, strict=True):
        synsets = [tax.synset(k) for k in keys]
        closure = set(synsets)
        for s in synsets:
            closure |= tax.ancestors(s)
        for cat in image.categories:
            senses = tax.senses[cat]
            hit = not closure.isdisjoint(senses)
            direct = {h for s in senses for h in s.hypernyms()}
            pairs += 1
            hits += hit
            hits_hyper += hit or not direct.isdisjoint(synsets)
            per_cat[cat][0] += hit
            per_cat[cat][1] += 1
            if " " in cat:
                mw_pairs += 1
                mw_wrong += any(_wrong_sense(s, cat, image.categories, tax) for s in synsets)
        for s in synsets:
            n_labels += 1
            non_physical += tax.physical not in tax.ancestors(s)
            cats = tax.categories_of(s)
            if cats:
                under_cat += 1
                false_obj += cats.isdisjoint(image.categories)
    return {
        "pairs": pairs,
        "recall": hits / max(pairs, 1),
        "recall_hypernym": hits_hyper / max(pairs, 1),
        "multiword_pairs": mw_pairs,
        "multiword_wrong": mw_wrong / max(mw_pairs, 1),
        "false_object": false_obj / max(under_cat, 1),
        "non_physical": non_physical / max(n_labels, 1),
        "labels_per_image": n_labels / max(len(images), 1),
        "per_category": per_cat,
    }


def _head_senses(cat: str, tax: Taxonomy) -> tuple:
    return tuple(tax.wn.synsets(cat.split()[-1], "n"))


def _wrong_sense(synset, cat: str, annotated: frozenset[str], tax: Taxonomy) -> bool:
    """``synset`` is a sense of ``cat``'s head noun that names something else, and nothing
    annotated in the image is that something."""
    if synset not in _head_senses(cat, tax):
        return False
    senses = tax.senses[cat]
    if tax.under(synset, senses) or any(synset in tax.ancestors(s) for s in senses):
        return False
    return tax.categories_of(synset).isdisjoint(annotated)


# --------------------------------------------------------------------------------------- ceiling
class Ceiling:
    """Which annotated categories a caption says, by name, WordNet synonym or hyponym lemma."""

    def __init__(self, tax: Taxonomy) -> None:
        self.tax = tax
        self.said: dict[str, set[str]] = defaultdict(set)  # lemma -> categories (name or synonym)
        self.hypo: dict[str, set[str]] = defaultdict(set)  # lemma -> categories (a hyponym's lemma too)
        for cat, senses in tax.senses.items():
            self.said[cat.replace(" ", "_")].add(cat)
            for s in senses:
                for lemma in s.lemma_names():
                    self.said[lemma.lower()].add(cat)
                for h in s.closure(lambda x: x.hyponyms() + x.instance_hyponyms()):
                    for lemma in h.lemma_names():
                        self.hypo[lemma.lower()].add(cat)
        for lemma, cats in self.said.items():
            self.hypo[lemma] |= cats
        self.longest = max(lemma.count("_") + 1 for lemma in self.hypo)

    def categories(self, tokens: list[str], table: dict[str, set[str]]) -> set[str]:
        out: set[str] = set()
        morphy = self.tax.wn._morphy
        for i in range(len(tokens)):
            for n in range(1, min(self.longest, len(tokens) - i) + 1):
                words = tokens[i : i + n]
                for form in {"_".join(words), "".join(words)}:
                    for base in {form, *morphy(form, "n")}:
                        out |= table.get(base, set())
        return out

    def named(self, images: list[Image]) -> set[str]:
        """The categories some caption of an image annotated with them names (name or synonym)."""
        from catlip.text import clean_caption, split_sentences, word_tokenize

        out: set[str] = set()
        for image in images:
            for caption in image.captions:
                for sentence in split_sentences(clean_caption(caption)):
                    out |= image.categories & self.categories(word_tokenize(sentence), self.said)
        return out

    def rates(self, images: list[Image]) -> dict[str, float]:
        from catlip.text import clean_caption, split_sentences, word_tokenize

        said = hypo = pairs = 0
        for image in images:
            s: set[str] = set()
            h: set[str] = set()
            for caption in image.captions:
                for sentence in split_sentences(clean_caption(caption)):
                    tokens = word_tokenize(sentence)
                    s |= self.categories(tokens, self.said)
                    h |= self.categories(tokens, self.hypo)
            pairs += len(image.categories)
            said += len(image.categories & s)
            hypo += len(image.categories & h)
        return {"said": said / max(pairs, 1), "said_hyponym": hypo / max(pairs, 1)}


# ------------------------------------------------------------------------------------------ main
ABLATIONS = {  # catlip-2 with one step switched off (catlip.senses' module docstring numbers them)
    "catlip-2:unfitted": {"fit": False},
    "catlip-2:no-context": {"context": False},
    "catlip-2:no-rescue": {"rescue": False},
    "catlip-2:no-compounds": {"compounds": False},
    "catlip-2:no-members": {"members": False},
    "catlip-2+no-pos-filter": {},
    "catlip-1+no-pos-filter": {},
}


def labeler_fn(name: str, fit_captions: list[str]) -> tuple[Callable[[str], list[str]], float]:
    """A labeler's ``synsets`` by bench name, and the seconds its fit took (catlip-2 is fitted on
    ``fit_captions``, as ``catlip vocab`` fits it on the vocabulary's captions)."""
    from catlip.labels import LabelerSpec, make_labeler
    from catlip.senses import SenseLabeler

    base, _, ablation = name.partition(":")
    options = dict(ABLATIONS.get(name, {}))
    fit = options.pop("fit", True)
    spec = LabelerSpec.parse(base)
    if spec.name != "catlip-2" or not fit:
        return make_labeler(spec, None, **options).synsets, 0.0
    start = time.process_time()
    table = SenseLabeler(pos_filter=spec.pos_filter, **options).fit_counts(fit_captions).table()
    seconds = time.process_time() - start
    return make_labeler(spec, table, **options).synsets, seconds


FIELDS = [
    "date", "commit", "data", "labeler", "images", "captions", "pairs", "recall", "recall_hypernym",
    "multiword_pairs", "multiword_wrong", "false_object", "non_physical", "labels_per_image",
    "captions_per_s", "fit_seconds", "named_zero_recall", "ceiling_said", "ceiling_said_hyponym",
]  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict]:
    from catlip.captions import iter_captions

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", nargs="+", choices=sorted(DATASETS), default=["dev", "coco128"])
    parser.add_argument(
        "--labelers", nargs="+", default=["corenet", "catlip-1", "catlip-2"],
        help="labeler names (catlip-2, catlip-1, corenet, NAME+no-pos-filter) or catlip-2's ablations "
        f"({', '.join(a for a in ABLATIONS if ':' in a)})",
    )  # fmt: skip
    parser.add_argument("--ablations", action="store_true", help="add every ablation to --labelers")
    parser.add_argument(
        "--categories", type=Path, help="another image -> categories JSON of val2017 ids for 'dev'"
    )
    parser.add_argument(
        "--fit-captions", type=Path, default=SHARED / "coco_captions_val2017.json",
        help="the captions catlip-2 is fitted on, as a vocabulary would be (default: all 25,014 "
        "val2017 captions, the main job's vocabulary; no annotation is read)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "perf" / "results" / "label_quality.csv")
    parser.add_argument("--no-write", action="store_true", help="print only; append no rows")
    args = parser.parse_args(argv)
    labelers = list(dict.fromkeys(args.labelers + (list(ABLATIONS) if args.ablations else [])))

    if not (SHARED / "coco_captions_val2017.json").is_file():
        raise SystemExit(f"bench_label_quality: {SHARED} has no COCO captions (the project's shared data)")
    tax = Taxonomy()
    ceiling = Ceiling(tax)
    fit_captions = [c for _, c in iter_captions(args.fit_captions)]
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    rows, cat_rows = [], []
    for data in args.data:
        images = (
            load_dev(categories=args.categories) if data == "dev" and args.categories else DATASETS[data]()
        )
        captions = sum(len(i.captions) for i in images)
        ceil = ceiling.rates(images)
        named = ceiling.named(images)
        print(f"\n{data}: {len(images):,} images, {captions:,} captions; ceiling: said {ceil['said']:.3f}, "
              f"said incl. hyponym lemmas {ceil['said_hyponym']:.3f}")  # fmt: skip
        print(f"{'labeler':<24} {'recall':>6} {'+hyper':>6} {'mw-wrong':>8} {'false':>6} {'nonphys':>7} "
              f"{'lab/img':>7} {'capt/s':>7}  named, 0 recall")  # fmt: skip
        per_cat = {}
        for name in labelers:
            label, fit_seconds = labeler_fn(name, fit_captions)
            labels, seconds = image_labels(label, images)
            m = score(images, labels, tax)
            per_cat[name] = m.pop("per_category")
            zero = sorted(c for c in named if per_cat[name][c][1] and not per_cat[name][c][0])
            row = {"date": stamp, "commit": commit(), "data": data, "labeler": name, "images": len(images),
                   "captions": captions, **m, "captions_per_s": captions / max(seconds, 1e-9),
                   "fit_seconds": fit_seconds, "named_zero_recall": " ".join(zero),
                   "ceiling_said": ceil["said"], "ceiling_said_hyponym": ceil["said_hyponym"]}  # fmt: skip
            rows.append({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
            print(f"{name:<24} {m['recall']:>6.3f} {m['recall_hypernym']:>6.3f} {m['multiword_wrong']:>8.3f} "
                  f"{m['false_object']:>6.3f} {m['non_physical']:>7.3f} {m['labels_per_image']:>7.2f} "
                  f"{row['captions_per_s']:>7,.0f}  {', '.join(zero) or '-'}")  # fmt: skip
        print(f"\nper-category recall ({data}; pairs, then each labeler):")
        print(f"{'category':<16} {'pairs':>5} " + " ".join(f"{n[-12:]:>12}" for n in labelers))
        for cat in sorted(CATEGORY_SENSES, key=lambda c: -per_cat[labelers[0]][c][1]):
            n = per_cat[labelers[0]][cat][1]
            if n:
                shown = " ".join(f"{per_cat[lab][cat][0] / n:>12.2f}" for lab in labelers)
                print(f"{cat:<16} {n:>5} {shown}")
            for lab in labelers:
                cat_rows.append({"date": stamp, "commit": commit(), "data": data, "labeler": lab, "category": cat,
                                 "pairs": n, "hits": per_cat[lab][cat][0]})  # fmt: skip
    if not args.no_write:
        append_rows(args.out, FIELDS, rows)
        cat_out = args.out.with_name(args.out.stem + "_categories.csv")
        append_rows(cat_out, ["date", "commit", "data", "labeler", "category", "pairs", "hits"], cat_rows)
        print(f"\nappended to {args.out} and {cat_out}")
    return rows


if __name__ == "__main__":
    main()
