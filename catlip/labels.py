"""Caption -> WordNet noun synsets -> CatLIP label indices: the labelers, the vocabulary.

Three labelers (:data:`LABELER_NAMES`), named in every file that carries labels
(:class:`LabelerSpec`: ``vocab.tsv.json``, ``dataset.json``, checkpoints, exports):

* ``catlip-2`` (the default): :class:`catlip.senses.SenseLabeler`, the sense each noun means, by
  WordNet rules and a sense table fitted on the vocabulary's captions.
* ``catlip-1``: :class:`CaptionLabeler`, the pipeline of the paper (CatLIP, arXiv 2404.15653,
  section 3; corenet's ``WordnetTaggedClassificationDataset``) with this engine's cleaning::

    caption --clean--> text --sent_tokenize--> sentences --word_tokenize--> tokens --POS tag, per
    sentence--> nouns (NN*) --lemmatise--> lemma --wn.synset(f"{lemma}.n.01"), kept only if its
    name matches--> key "n02084071"

  The lemma is the shortest of WordNet's noun base forms (NLTK's ``WordNetLemmatizer``); when its
  ``.n.01`` is another word's synset, the token's other base forms are tried ("men" -> man.n.01,
  as ``men.n.01`` is work_force.n.01; "vases" -> vase.n.01, as ``vas.n.01`` is vessel.n.01), but
  never the token unchanged ("ways" is not ways.n.01, the slipway).
* ``corenet``: :class:`CaptionLabeler` with ``official=True``, corenet's rules exactly: its
  caption cleaning (URL-unquote, ftfy, no HTML unescaping), the first lemma only, and every token
  considered, tagged or not (corenet tags but never reads the tags; the tagger is skipped here).

The key is ImageNet's: "n" + the 8-digit WordNet 3.0 offset. catlip-1's lookups are cached per
token, so a word's lemma and synset are computed once per process.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catlip.captions import cut_caption
from catlip.text import clean_caption, clean_caption_official, get_tagger, split_sentences, word_tokenize

_CACHE_LIMIT = 1 << 20  # distinct tokens remembered per process (~100 MB at most)
_TOKEN_RE = re.compile(r"[a-z]")  # a token without a letter names no noun


def wnid(offset: int) -> str:
    """ImageNet-style synset id: ``wnid(2084071) == "n02084071"``."""
    return f"n{offset:08d}"


class CaptionLabeler:
    """Turns captions into WordNet noun synset ids (wnids), unique, in order of appearance."""

    def __init__(self, *, pos_filter: bool = True, official: bool = False) -> None:
        from nltk.corpus.reader.wordnet import WordNetError

        from catlip.nltk_resources import wordnet

        self.official = official
        self.pos_filter = pos_filter and not official
        self._wn = wordnet()
        self._wn_error = WordNetError
        self._wn.ensure_loaded()
        self._tagger = get_tagger() if self.pos_filter else None
        self._cache: dict[str, str | None] = {}
        self._names: dict[str, str] = {}  # wnid -> synset name, for every wnid handed out
        self._clean = clean_caption_official if official else clean_caption
        split_sentences("a. b.")  # fails now, naming `catlip setup-nltk`, if punkt_tab is missing

    def clean(self, caption: object) -> str:
        """The text the labels are read from: the caption cut and cleaned."""
        return self._clean(cut_caption(caption)[0])

    def sentences(self, caption: object) -> list[list[str]]:
        """The caption's tokens, sentence by sentence (as ``nltk.word_tokenize`` splits them)."""
        return [word_tokenize(sent) for sent in split_sentences(self._clean(caption))]

    def tokens(self, caption: object) -> list[str]:
        return [t for sent in self.sentences(caption) for t in sent]

    def nouns(self, caption: object) -> list[str]:
        """The tokens that are looked up in WordNet: NN* tokens (tagged sentence by sentence), or
        all tokens without the filter."""
        if not self.pos_filter:
            return self.tokens(caption)
        tag = self._tagger.tag
        return [
            tok
            for sent in self.sentences(caption)
            for tok, pos in zip(sent, tag(sent), strict=True)
            if pos.startswith("NN")
        ]

    def synset_of(self, token: str) -> str | None:
        """The wnid of ``{lemma}.n.01`` for a token, or None when WordNet has no such noun."""
        try:
            return self._cache[token]
        except KeyError:
            pass
        key = None
        if self.official or _TOKEN_RE.search(token):
            for lemma in self._lemmas(token):
                try:
                    synset = self._wn.synset(f"{lemma}.n.01")
                except (self._wn_error, ValueError):
                    continue  # no noun sense (WordNetError), or a token NLTK's name parser rejects
                if synset.name() == f"{lemma}.n.01":
                    key = wnid(synset.offset())
                    self._names[key] = synset.name()
                    break
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[token] = key
        return key

    def _lemmas(self, token: str) -> list[str]:
        """Noun lemmas to try: the shortest base form, as NLTK's ``WordNetLemmatizer().lemmatize``
        returns it (corenet keeps only this one), then the token's other base forms, shortest first,
        from WordNet's exception lists or its suffix rules, but not the token itself. That recovers
        "men" (whose shortest lemma "men" names ``work_force.n.01``) as man.n.01, "teeth" as
        tooth.n.01, "vases" (``vas.n.01`` is vessel.n.01) as vase.n.01 and "cookies" (``cooky.n.01``
        is cookie.n.02) as cookie.n.01, without the plural-only senses that taking the token
        unchanged brought: "ways" -> ways.n.01 (a slipway), "masters" -> masters.n.01 (the poet),
        "taxis", "elements" (measured on COCO val2017 in tests/test_labels.py)."""
        forms = self._wn._morphy(token, "n")
        first = min(forms, key=len) if forms else token
        if self.official:
            return [first]
        return [first, *(f for f in sorted(forms, key=len) if f != first and f != token)]

    def name_of(self, key: str) -> str:
        """Synset name (``dog.n.01``) of a wnid this labeler returned."""
        return self._names[key]

    def synsets(self, caption: object) -> list[str]:
        """Unique wnids of a caption's nouns, in order of first appearance. Never raises on text.
        Of a caption longer than ``MAX_CAPTION_CHARS``, only that many first characters are read."""
        out: list[str] = []
        for token in self.nouns(cut_caption(caption)[0]):
            key = self.synset_of(token)
            if key is not None and key not in out:
                out.append(key)
        return out


# ------------------------------------------------------------------------------------- vocabulary
class VocabularyError(ValueError):
    """A vocabulary file that does not parse."""


VOCAB_COLUMNS = ("index", "wnid", "synset", "lemma", "count")
_HEADER = "\t".join(VOCAB_COLUMNS)


@dataclass
class Vocabulary:
    """The label space: synsets in index order, with their caption counts."""

    wnids: list[str]
    synsets: list[str]
    counts: list[int]
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not (len(self.wnids) == len(self.synsets) == len(self.counts)):
            raise VocabularyError("wnids, synsets and counts differ in length")
        self.index = {}
        for i, key in enumerate(self.wnids):
            if key in self.index:  # line numbers as in the TSV (header = line 1)
                raise VocabularyError(
                    f"duplicate wnid {key} at line {i + 2} (first at line {self.index[key] + 2})"
                )
            self.index[key] = i

    def __len__(self) -> int:
        return len(self.wnids)

    @property
    def lemmas(self) -> list[str]:
        return [name.rsplit(".", 2)[0] for name in self.synsets]

    @classmethod
    def from_counts(
        cls, counts: dict[str, int], names: dict[str, str], *, min_count: int = 1, top_k: int | None = None
    ) -> Vocabulary:
        """Keep synsets seen in at least ``min_count`` captions, most frequent first (ties by wnid)."""
        kept = sorted((k for k, c in counts.items() if c >= min_count), key=lambda k: (-counts[k], k))
        if top_k is not None:
            kept = kept[:top_k]
        return cls(kept, [names[k] for k in kept], [counts[k] for k in kept])

    def save(self, path: Path | str) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f, delimiter="\t", lineterminator="\n")
            writer.writerow(VOCAB_COLUMNS)
            for i, (key, name, count) in enumerate(zip(self.wnids, self.synsets, self.counts, strict=True)):
                writer.writerow((i, key, name, name.rsplit(".", 2)[0], count))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path | str) -> Vocabulary:
        path = Path(path)
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise VocabularyError(f"{path}: cannot read the vocabulary ({err})") from err
        if not lines or tuple(lines[0].split("\t")) != VOCAB_COLUMNS:
            raise VocabularyError(
                f"{path}:1: not a catlip vocabulary (expected the header {_HEADER!r}; "
                "build one with `catlip vocab`)"
            )
        wnids, synsets, counts = [], [], []
        for lineno, line in enumerate(lines[1:], start=2):
            cells = line.split("\t")
            try:
                index, key, name, _lemma, count = cells
                if int(index) != len(wnids):
                    raise ValueError(f"index {index} out of order (expected {len(wnids)})")
                if not re.fullmatch(r"n\d{8}", key):
                    raise ValueError(f"bad wnid {key!r}")
                wnids.append(key)
                synsets.append(name)
                counts.append(int(count))
            except ValueError as err:
                raise VocabularyError(f"{path}:{lineno}: {err} in {line!r}") from err
        try:
            return cls(wnids, synsets, counts)
        except VocabularyError as err:
            raise VocabularyError(f"{path}: {err}") from err

    def encode_synsets(self, keys: Iterable[str]) -> list[int]:
        """Sorted unique label indices of the wnids that are in the vocabulary."""
        index = self.index
        return sorted({index[k] for k in keys if k in index})


class LabelEncoder:
    """caption -> sorted unique label indices into a vocabulary (sparse, never multi-hot)."""

    def __init__(self, vocab: Vocabulary | Path | str, *, labeler: Any = None) -> None:
        """``labeler``: a labeler object; or a :class:`LabelerSpec` or name, whose sense table is the
        one beside the vocabulary file; or None: the labeler the vocabulary file was built with."""
        path = None if isinstance(vocab, Vocabulary) else Path(vocab)
        self.vocab = vocab if path is None else Vocabulary.load(path)
        if labeler is None or isinstance(labeler, LabelerSpec | str):
            if labeler is None and path is None:
                raise VocabularyError("a Vocabulary object has no recorded labeler: pass labeler=")
            spec = vocab_labeler(path) if labeler is None else labeler
            if isinstance(spec, str):
                spec = LabelerSpec.parse(spec)
            senses = load_senses(spec, senses_path(path) if path is not None else None)
            if senses is not None and spec.senses_sha256 is None:
                spec = LabelerSpec(spec.name, spec.pos_filter, senses.sha256)
            self.spec = spec
            labeler = make_labeler(spec, senses)
        else:
            self.spec = None
        self.labeler = labeler

    def __call__(self, caption: object) -> list[int]:
        return self.vocab.encode_synsets(self.labeler.synsets(caption))

    def encode_batch(self, captions: Sequence[object]) -> list[list[int]]:
        return [self(c) for c in captions]


# ------------------------------------------------------------------------------------- labelers
DEFAULT_LABELER = "catlip-2"
LABELER_NAMES = ("catlip-2", "catlip-1", "corenet")
LABELER_HELP = {
    "catlip-2": "senses by WordNet rules: compounds, the concrete sense, synonyms, context and the "
    "corpus's own compounds (catlip.senses); fitted on the vocabulary's captions",
    "catlip-1": "this engine's first labeler: {lemma}.n.01 kept when its name matches, POS filter",
    "corenet": "the official CatLIP code's rules (its cleaning, first lemma only, no POS filter)",
}


class LabelerMismatch(ValueError):
    """Two things labelled by different labelers (a vocabulary and a pack, two packs, ...)."""


@dataclass(frozen=True)
class LabelerSpec:
    """Which labeler made a set of labels, as ``vocab.tsv.json``, ``dataset.json``, checkpoints and
    exports record it: its name, the POS filter, and for catlip-2 the digest of its fitted sense
    table (:class:`catlip.senses.SenseTable`), without which its labels cannot be reproduced."""

    name: str = DEFAULT_LABELER
    pos_filter: bool = True
    senses_sha256: str | None = None

    def __post_init__(self) -> None:
        if self.name not in LABELER_NAMES:
            raise ValueError(f"unknown labeler {self.name!r} (choose from {', '.join(LABELER_NAMES)})")
        if self.name == "corenet" and self.pos_filter:  # corenet tags but never filters
            object.__setattr__(self, "pos_filter", False)
        if self.name != "catlip-2" and self.senses_sha256 is not None:
            raise ValueError(f"labeler {self.name} has no sense table")

    @property
    def id(self) -> str:
        """``catlip-2``, ``catlip-1+no-pos-filter``, ``corenet``."""
        return self.name + ("+no-pos-filter" if not self.pos_filter and self.name != "corenet" else "")

    def describe(self) -> str:
        return self.id + (f" (sense table {self.senses_sha256[:12]})" if self.senses_sha256 else "")

    def record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {"name": self.name, "pos_filter": self.pos_filter}
        if self.name == "catlip-2":
            rec["senses_sha256"] = self.senses_sha256
        return rec

    @classmethod
    def parse(cls, text: str) -> LabelerSpec:
        """From an id: ``catlip-2``, ``catlip-1+no-pos-filter``, ``corenet``."""
        name, plus, rest = text.partition("+")
        if plus and rest != "no-pos-filter":
            raise ValueError(f"unknown labeler {text!r} (a name, optionally followed by +no-pos-filter)")
        return cls(name, not plus)

    @classmethod
    def from_record(cls, rec: Any, *, where: str = "the record") -> LabelerSpec:
        if not isinstance(rec, dict) or not isinstance(rec.get("name"), str):
            raise ValueError(f"{where}: malformed labeler record {rec!r}")
        try:
            return cls(rec["name"], bool(rec.get("pos_filter", True)), rec.get("senses_sha256"))
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None

    @classmethod
    def of_meta(cls, meta: dict[str, Any], *, where: str = "the record") -> LabelerSpec:
        """The labeler of a ``vocab.tsv.json`` or ``dataset.json``; one written before labelers had
        names carries ``official`` / ``pos_filter``: corenet, or catlip-1 with or without the filter."""
        if "labeler" in meta:
            return cls.from_record(meta["labeler"], where=where)
        if meta.get("official"):
            return cls("corenet")
        return cls("catlip-1", bool(meta.get("pos_filter", True)))

    def check_same(self, other: LabelerSpec, what: str, other_what: str) -> None:
        """Raise :class:`LabelerMismatch` naming both unless ``other`` is this labeler."""
        if other != self:
            raise LabelerMismatch(
                f"{what} was labelled by {self.describe()}, {other_what} by {other.describe()}: labels of "
                "different labelers do not mix (re-pack or rebuild the vocabulary with one of them)"
            )


def vocab_meta_path(vocab: Path | str) -> Path:
    """The vocabulary's sidecar, ``vocab.tsv.json`` (sources, settings, labeler)."""
    return Path(f"{vocab}.json")


def senses_path(vocab: Path | str) -> Path:
    """The vocabulary's fitted sense table, ``vocab.tsv.senses.json`` (catlip-2)."""
    return Path(f"{vocab}.senses.json")


def vocab_labeler(vocab: Path | str) -> LabelerSpec:
    """The labeler a vocabulary was built with, from its sidecar. A vocabulary without one (written
    by ``Vocabulary.save`` alone) has no known labeler: a VocabularyError says what to do."""
    meta_path = vocab_meta_path(vocab)
    if not meta_path.is_file():
        raise VocabularyError(
            f"{vocab}: no {meta_path.name} beside it, so the labeler its synsets came from is unknown; "
            "rebuild it with `catlip vocab`, or name the labeler (--labeler)"
        )
    from catlip.readers import load_json

    try:
        meta = load_json(meta_path)
        return LabelerSpec.of_meta(
            meta if isinstance(meta, dict) else {"labeler": meta}, where=str(meta_path)
        )
    except ValueError as err:
        raise VocabularyError(str(err)) from None


def load_senses(spec: LabelerSpec, path: Path | str | None):
    """The sense table ``spec`` names, read from ``path`` and checked against its digest (catlip-2);
    None for the other labelers."""
    if spec.name != "catlip-2":
        return None
    from catlip.senses import SenseTable

    if path is None or not Path(path).is_file():
        raise VocabularyError(
            f"labeler catlip-2 needs its sense table ({path or 'no path given'}): it is written beside the "
            "vocabulary by `catlip vocab` (vocab.tsv.senses.json)"
        )
    try:
        table = SenseTable.load(path)
    except ValueError as err:
        raise VocabularyError(str(err)) from None
    if spec.senses_sha256 is not None and table.sha256 != spec.senses_sha256:
        raise VocabularyError(
            f"{path}: sense table sha256 {table.sha256[:12]}, but the labeler record names "
            f"{spec.senses_sha256[:12]}: the table changed since the vocabulary was built (rebuild it)"
        )
    return table


def make_labeler(spec: LabelerSpec | str = DEFAULT_LABELER, senses=None, **options):
    """A labeler object for ``spec`` (``synsets(caption)``, ``name_of(wnid)``); ``senses`` is
    catlip-2's fitted table (None: unfitted, its priors and context alone). ``options`` switch
    catlip-2's steps off, for measuring them."""
    if isinstance(spec, str):
        spec = LabelerSpec.parse(spec)
    if spec.name == "catlip-2":
        from catlip.senses import SenseLabeler

        return SenseLabeler(pos_filter=spec.pos_filter, senses=senses, **options)
    if options:
        raise ValueError(f"labeler {spec.name} takes no options ({', '.join(options)})")
    return CaptionLabeler(pos_filter=spec.pos_filter, official=spec.name == "corenet")
