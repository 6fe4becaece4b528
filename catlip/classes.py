"""Class sets to synsets, and synsets to rows of the CatLIP head (``catlip classes``).

A class set is a names file (one name a line, or a YOLO ``names:`` YAML, id -> name) or a wnid file
(ImageNet-style ids, ``n02084071``). Each class gets one WordNet noun synset, then one or more rows
of the vocabulary, the rows its zero-shot score and its synset classifier initialisation read.

The class's synset (``how``) follows the rules of the labeler the vocabulary was built with. For a
catlip-2 vocabulary (``vocab.tsv.json`` names it; its sense table is beside it), a name is read as
that labeler reads a caption's noun phrase (:meth:`catlip.senses.SenseLabeler.phrase_sense`: the
whole name where it is one WordNet noun, else its head with the other words as context; the
concrete sense, the corpus's senses): "tv" -> television_receiver.n.01, "kite" -> kite.n.03, "stop
sign" -> sign.n.02, after the modifier rule below for a multi-word name that is no lemma; ``how``
ends in "the labeler's sense". For other vocabularies (catlip-1, corenet, or none recorded):
  * ``override``: the overrides TSV (``name<TAB>wnid``, or a synset name like ``dog.n.01``) wins
    (for every vocabulary);
  * ``wnid``: the id a wnid file gives (an overrides line may name the wnid instead of a name);
  * ``lemma``: the name is a WordNet noun lemma (spaces and hyphens as underscores, or written as
    one word: "wine glass" -> wineglass, "cell phone" -> cellphone; plurals via WordNet's
    morphology: "skis" -> ski): its first sense, as the labeler takes it, except for the few names
    in :data:`KNOWN_SENSES` whose first sense is not the thing a picture shows ("hot dog": the
    show-off, not the food) -> ``known sense``;
  * ``head noun``: a multi-word name that is no lemma ("sports ball", "stop sign") takes its last
    word's senses: the first whose neighbourhood (gloss, lemma names, hyponyms' lemma names) names
    the modifier ("potted plant" -> plant.n.02, which has the hyponym pot_plant), else the first.

The class's rows come from the vocabulary the head was trained on. Its synsets are those the caption
labeler gave caption words (catlip-1: the first noun sense of each word, corenet's rule; catlip-2:
the word's sense as it labels the word alone), so a row stands for
what captions using that word showed, whichever sense of the word they meant ("table.n.01" is a table
of data, yet it is the row "a dining table with food" trained). The rows of a synset S:
  * S's own row, when S is in the vocabulary (``distance`` 0);
  * else the row of S's word: its first lemma name, when it is one word that captions label with a
    vocabulary synset that is a sense of that same word ("hot dog" -> hotdog.n.02, the food: word
    "hotdog" -> row hotdog.n.01; "handbag" -> bag.n.04: word "bag" -> row bag.n.01), distance 0;
  * else the same for the synsets nearest to S by hypernym and hyponym links: all those at the
    shortest distance that give a row (their own rows if any has one, else their words' rows), at
    most :data:`MAX_DISTANCE` links ("dining table" -> table.n.03, 1 link: word "table" -> row
    table.n.01; "cell phone" -> telephone.n.01, 2 links; "tie" -> shirt, suit, scarf ..., 3 links).
``distance`` counts the links from S to the synset that gave the row; ``how`` names it.
A class with no synset, or no row by any of these, is unmapped: an error naming it, or (with
``allow_unmapped``) left out and listed in the output's ``unmapped``.

The output (``catlip-classes/1``) records per class its synset, rows (vocabulary indices), the rows'
wnids, the distance and how it was found, and the vocabulary's SHA-256 (of the TSV's bytes, the
digest ``catlip pack`` and checkpoints carry), so a checkpoint of another vocabulary is refused.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from catlip.labels import Vocabulary, wnid
from catlip.readers import load_json, load_yaml

FORMAT = "catlip-classes/1"
MAX_DISTANCE = 4  # beyond this many hypernym/hyponym links a synset says little about the class

# Names whose first WordNet sense is not what an image class set means by them; the value is the
# sense taken instead. Kept to cases a reader can check in WordNet 3.0.
KNOWN_SENSES: dict[str, str] = {
    "hot dog": "hotdog.n.02",  # hotdog.n.01: "someone who performs dangerous stunts"
    "hotdog": "hotdog.n.02",
    "hot_dog": "hotdog.n.02",
}

_WNID_RE = re.compile(r"n\d{8}")


class ClassMapError(ValueError):
    """A class set, override or class map that cannot be used; the message says which and why."""


@dataclass
class ClassEntry:
    index: int
    name: str
    wnid: str
    synset: str
    rows: list[int]
    row_wnids: list[str]
    distance: int
    how: str
    row_synsets: list[str] = field(default_factory=list)  # for the table; not in the JSON

    @property
    def placement(self) -> str:
        """Where the class reads the head: "own row" (its synset's), "word row" (the row its word
        got in the captions) or "nearest" (synsets hypernym/hyponym links away)."""
        if self.distance == 0 and self.row_wnids == [self.wnid]:
            return "own row"
        return "word row" if self.distance == 0 else "nearest"


@dataclass
class ClassMap:
    """A class set mapped onto a vocabulary (what ``catlip classes`` writes)."""

    classes: list[ClassEntry]
    vocab: dict[str, Any]  # path, size, sha256
    source: dict[str, str]  # path, kind
    unmapped: list[str]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    def summary(self) -> str:
        """How many classes, and how many read the head where: ``80 classes (79 own row, 1 word row)``."""
        counts = Counter(c.placement for c in self.classes)  # in the order each first occurs
        return f"{len(self.classes)} classes ({', '.join(f'{n} {k}' for k, n in counts.items())})"

    def to_json(self) -> dict[str, Any]:
        classes = []
        for c in self.classes:
            d = asdict(c)
            d.pop("row_synsets")
            classes.append(d)
        return {
            "format": FORMAT,
            "vocab": self.vocab,
            "source": self.source,
            "classes": classes,
            "unmapped": self.unmapped,
        }

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> ClassMap:
        path = Path(path)
        try:
            raw = load_json(path, ClassMapError)
        except FileNotFoundError:
            raise ClassMapError(f"{path}: no such file (write one with `catlip classes`)") from None
        except (OSError, ValueError) as err:
            raise ClassMapError(f"{path}: not a readable class map ({err})") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ClassMapError(
                f'{path}: not a class map (no "format": {FORMAT!r}; write one with `catlip classes`)'
            )
        try:
            classes = [
                ClassEntry(
                    **{
                        k: c[k]
                        for k in ("index", "name", "wnid", "synset", "rows", "row_wnids", "distance", "how")
                    }
                )
                for c in raw["classes"]
            ]
            vocab = dict(raw["vocab"])
            vocab["sha256"], vocab["size"]  # noqa: B018 - both must be there
        except (KeyError, TypeError) as err:
            raise ClassMapError(f"{path}: malformed class map (missing {err})") from None
        if not classes:
            raise ClassMapError(f"{path}: holds no class")
        for i, c in enumerate(classes):
            if c.index != i or not c.rows or any(not 0 <= r < int(vocab["size"]) for r in c.rows):
                raise ClassMapError(f"{path}: class {i} ({c.name!r}) has a bad index or rows {c.rows}")
        return cls(classes, vocab, dict(raw.get("source") or {}), list(raw.get("unmapped") or []))


# ------------------------------------------------------------------------------------ reading inputs
def read_names(path: str | Path) -> list[str]:
    """Class names from a text file (one a line; blank lines and ``#`` comments skipped) or a
    YOLO-style YAML whose ``names`` is a list or an id -> name mapping (ids 0..C-1)."""
    path = Path(path)
    text = _read_text(path, "names file")
    if path.suffix.lower() in (".yaml", ".yml") or re.search(r"^names\s*:", text, re.M):
        raw = load_yaml(text, str(path), ClassMapError)
        names = raw.get("names") if isinstance(raw, dict) else None
        if isinstance(names, dict):
            try:
                ids = sorted(int(k) for k in names)
            except (TypeError, ValueError):
                raise ClassMapError(f"{path}: names: keys must be class ids (0, 1, ...)") from None
            if ids != list(range(len(ids))):
                raise ClassMapError(f"{path}: names: class ids must be 0..{len(ids) - 1} with none missing")
            names = [names.get(i, names.get(str(i))) for i in ids]
        if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
            raise ClassMapError(f"{path}: expected `names:` as a list or an id: name mapping of strings")
        out = [n.strip() for n in names]
    else:
        out = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    _check_unique(out, path)
    if not out:
        raise ClassMapError(f"{path}: no class names in it")
    return out


def read_wnids(path: str | Path) -> list[str]:
    """ImageNet-style wnids, one a line (anything after the id on the line, e.g. a name, is ignored)."""
    path = Path(path)
    out = []
    for lineno, line in enumerate(_read_text(path, "wnid file").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key = line.split()[0]
        if not _WNID_RE.fullmatch(key):
            raise ClassMapError(
                f"{path}:{lineno}: {key!r} is not a wnid (n followed by 8 digits, e.g. n02084071)"
            )
        out.append(key)
    _check_unique(out, path)
    if not out:
        raise ClassMapError(f"{path}: no wnids in it")
    return out


def read_overrides(path: str | Path) -> dict[str, str]:
    """name<TAB>wnid (or a synset name) lines; names compare case-insensitively."""
    path = Path(path)
    out: dict[str, str] = {}
    for lineno, line in enumerate(_read_text(path, "overrides file").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        cells = line.rstrip("\n").split("\t")
        if len(cells) != 2 or not cells[0].strip() or not cells[1].strip():
            raise ClassMapError(f"{path}:{lineno}: expected name<TAB>wnid, got {line!r}")
        name, target = cells[0].strip(), cells[1].strip()
        try:
            _synset_of(target)
        except ClassMapError as err:
            raise ClassMapError(f"{path}:{lineno}: {err}") from None
        out[name.lower()] = target
    return out


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ClassMapError(f"{path}: no such {what}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ClassMapError(f"{path}: cannot read the {what} ({err})") from None


def _check_unique(items: list[str], path: Path) -> None:
    seen: set[str] = set()
    for item in items:
        if item.lower() in seen:
            raise ClassMapError(f"{path}: {item!r} appears twice")
        seen.add(item.lower())


# ------------------------------------------------------------------------------------ WordNet
def _wn():
    from catlip.nltk_resources import wordnet

    return wordnet()


def _synset_of(target: str):
    """A noun synset from a wnid (n02084071) or a synset name (dog.n.01)."""
    from nltk.corpus.reader.wordnet import WordNetError

    wn = _wn()
    found = None
    try:
        if _WNID_RE.fullmatch(target):
            with warnings.catch_warnings():  # NLTK warns, then returns None, for an unknown offset
                warnings.simplefilter("ignore")
                found = wn.synset_from_pos_and_offset("n", int(target[1:]))
        elif re.fullmatch(r".+\.n\.\d+", target):
            found = wn.synset(target)
        else:
            raise ClassMapError(f"{target!r} is neither a wnid (n02084071) nor a noun synset name (dog.n.01)")
    except ClassMapError:
        raise
    except (WordNetError, ValueError):
        pass
    if found is None:
        raise ClassMapError(f"{target!r} is no WordNet 3.0 noun synset")
    return found


def _lemma_forms(name: str) -> list[str]:
    """Spellings of a name to look up as one WordNet lemma, most literal first."""
    base = re.sub(r"[\s\-]+", "_", name.strip().lower())
    forms = [base, base.replace("_", "")] if "_" in base else [base]
    out: list[str] = []
    for form in forms:
        for f in [form, *sorted(_wn()._morphy(form, "n"), key=len)]:
            if f not in out:
                out.append(f)
    return out


def _lemmas(synset: Any) -> set[str]:
    return {n.lower() for n in synset.lemma_names()}


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[^a-z0-9]+", text.lower()) if w]


def _modifier_sense(head_senses: list, modifiers: list[str]):
    """The first sense of the head noun whose gloss, lemma names or hyponyms' lemma names contain a
    form of a modifier ("potted" -> "pot": plant.n.02 has pot_plant), or None."""
    wn = _wn()
    forms = set()
    for m in modifiers:
        forms.add(m)
        for pos in ("n", "v", "a"):
            forms.update(wn._morphy(m, pos))
    for sense in head_senses:
        text = [sense.definition(), *sense.lemma_names()]
        text += [n for h in sense.hyponyms() for n in h.lemma_names()]
        if forms & {w for t in text for w in _words(t)}:
            return sense
    return None


def resolve_synset(name: str, override: str | None = None, labeler: Any = None) -> tuple[Any, str] | None:
    """(noun synset, how) for a class name, or None when WordNet has nothing for it.

    ``labeler``: a catlip-2 labeler (the vocabulary's, with its sense table): the name's sense is
    the one it gives the name as a caption noun phrase (its concrete-sense prior, the corpus's
    senses), after the modifier rule for a multi-word name that is no lemma. None: catlip-1's
    rules (a name's first sense, :data:`KNOWN_SENSES`), for vocabularies labelled by it."""
    wn = _wn()
    if override is not None:
        return _synset_of(override), "override"
    key = name.strip().lower()
    words = _words(name)
    if labeler is not None:
        if len(words) > 1 and not labeler._compound_key(tuple(words)):
            heads = [wn.synset(s.name) for s, _ in labeler.candidates(labeler._noun_forms(words[-1]))]
            chosen = _modifier_sense(heads, words[:-1])
            if chosen is not None:
                return chosen, f"head noun {words[-1]!r}, the sense naming {' '.join(words[:-1])!r}"
        found = labeler.phrase_sense(words)
        if found is None:
            return None
        sense, how = found
        return wn.synset(sense.name), f"{how}, the labeler's sense"
    if key in KNOWN_SENSES:
        return wn.synset(KNOWN_SENSES[key]), "known sense"
    for form in _lemma_forms(name):
        senses = wn.synsets(form, "n")
        if senses:
            return senses[0], "lemma"
    if len(words) > 1:
        heads = []
        for form in _lemma_forms(words[-1]):
            heads = wn.synsets(form, "n")
            if heads:
                break
        if heads:
            chosen = _modifier_sense(heads, words[:-1])
            if chosen is not None:
                return chosen, f"head noun {words[-1]!r}, the sense naming {' '.join(words[:-1])!r}"
            return heads[0], f"head noun {words[-1]!r}"
    return None


# ------------------------------------------------------------------------------------ the mapper
class ClassMapper:
    """Maps class names or wnids onto a vocabulary's rows (see the module docstring)."""

    def __init__(
        self, vocab: Vocabulary, *, overrides: dict[str, str] | None = None, labeler: Any = None
    ) -> None:
        """``labeler``: the one the vocabulary's captions were labelled with; a catlip-2 labeler
        brings its sense rules, anything else (None: catlip-1) the first-sense rules."""
        from catlip.labels import CaptionLabeler
        from catlip.senses import SenseLabeler

        self.vocab = vocab
        self.overrides = {k.lower(): v for k, v in (overrides or {}).items()}
        self.senses = labeler if isinstance(labeler, SenseLabeler) else None
        self._labeler = CaptionLabeler(pos_filter=False)  # catlip-1's synset_of: a word's first sense

    def word_row(self, word: str) -> int | None:
        """The vocabulary row the caption labeler gives ``word`` alone, or None."""
        if self.senses is not None:
            found = self.senses.phrase_sense([word])
            key = found[0].key if found else None
        else:
            key = self._labeler.synset_of(word.lower())
        return self.vocab.index.get(key) if key else None

    def rows_for(self, synset: Any) -> tuple[list[int], int, str] | None:
        """(rows, distance, how) of a synset: a breadth-first walk over hypernym and hyponym
        links from it; at each distance, the synsets reached that are rows, or whose word (first
        lemma name, one word) is a row as captions labelled it. All of the shortest distance."""
        seen, frontier = {synset}, [synset]
        for distance in range(MAX_DISTANCE + 1):
            if distance:
                nxt = []
                for s in frontier:
                    for t in s.hypernyms() + s.instance_hypernyms() + s.hyponyms() + s.instance_hyponyms():
                        if t not in seen:
                            seen.add(t)
                            nxt.append(t)
                frontier = nxt
            hits: dict[int, str] = {}
            for s in frontier:  # the synsets' own rows
                own = self.vocab.index.get(wnid(s.offset()))
                if own is not None:
                    hits.setdefault(own, s.name())
            for s in frontier if not hits else ():  # else the rows of their words
                word = s.lemma_names()[0].lower()
                row = None if "_" in word else self.word_row(word)
                # the row's synset must be a sense of this very word ("weeds" -> weed.n.01 is not)
                if row is not None and word in _lemmas(_synset_of(self.vocab.wnids[row])):
                    hits.setdefault(row, f"{s.name()} by its word {word!r}")
            if hits:
                rows = sorted(hits)
                if distance == 0 and rows == [self.vocab.index.get(wnid(synset.offset()))]:
                    return rows, 0, ""
                links = f"{distance} link{'s' * (distance != 1)}"
                via = ", ".join(dict.fromkeys(hits[r] for r in rows))
                return rows, distance, f"{'nearest ' if distance else ''}{via} ({links})"
        return None

    def map_one(self, index: int, name: str, synset: Any | None, how: str) -> ClassEntry | None:
        if synset is None:
            return None
        found = self.rows_for(synset)
        if found is None:
            return None
        rows, distance, row_how = found
        return ClassEntry(
            index=index,
            name=name,
            wnid=wnid(synset.offset()),
            synset=synset.name(),
            rows=rows,
            row_wnids=[self.vocab.wnids[r] for r in rows],
            distance=distance,
            how=f"{how}; {row_how}" if row_how else how,
            row_synsets=[self.vocab.synsets[r] for r in rows],
        )

    def map_names(self, names: Iterable[str]) -> tuple[list[ClassEntry], list[str]]:
        """(mapped classes, in order and re-indexed; names that did not map)."""
        out, unmapped = [], []
        for name in names:
            resolved = resolve_synset(name, self.overrides.get(name.lower()), self.senses)
            entry = self.map_one(len(out), name, *(resolved or (None, "")))
            if entry is None:
                unmapped.append(name)
            else:
                out.append(entry)
        return out, unmapped

    def map_wnids(self, wnids: Iterable[str]) -> tuple[list[ClassEntry], list[str]]:
        out, unmapped = [], []
        for key in wnids:
            try:
                synset = _synset_of(key)
            except ClassMapError:
                unmapped.append(key)
                continue
            name = self.overrides.get(key.lower())
            how = "wnid"
            if name is not None:  # an override keyed by the wnid replaces its synset
                synset, how = _synset_of(name), "override"
            entry = self.map_one(len(out), synset.lemma_names()[0].replace("_", " "), synset, how)
            if entry is None:
                unmapped.append(key)
            else:
                out.append(entry)
        return out, unmapped


def _vocab_labeler(vocab_path: Path) -> Any:
    """The labeler (with its sense table) a vocabulary's captions were labelled with; None for a
    vocabulary from before labelers had names (no sidecar) or labelled by catlip-1 or corenet."""
    from catlip.labels import VocabularyError, load_senses, make_labeler, senses_path, vocab_labeler

    try:
        spec = vocab_labeler(vocab_path)
    except VocabularyError:
        return None
    if spec.name != "catlip-2":
        return None
    try:
        return make_labeler(spec, load_senses(spec, senses_path(vocab_path)))
    except VocabularyError as err:
        raise ClassMapError(str(err)) from None


def vocab_sha256(path: str | Path) -> str:
    """The digest ``catlip pack`` writes as ``vocab_sha256`` (of the TSV's bytes)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def build_class_map(
    vocab_path: str | Path,
    *,
    names: str | Path | None = None,
    wnids: str | Path | None = None,
    overrides: str | Path | None = None,
    allow_unmapped: bool = False,
) -> ClassMap:
    """Map a names or wnid file onto a vocabulary; raises ClassMapError naming the unmapped classes
    unless ``allow_unmapped``."""
    if (names is None) == (wnids is None):
        raise ClassMapError("give one of a names file or a wnid file")
    vocab_path = Path(vocab_path)
    if not vocab_path.is_file():
        raise ClassMapError(f"{vocab_path}: no such vocabulary (build one with `catlip vocab`)")
    vocab = Vocabulary.load(vocab_path)
    mapper = ClassMapper(
        vocab, overrides=read_overrides(overrides) if overrides else None, labeler=_vocab_labeler(vocab_path)
    )
    if names is not None:
        classes, unmapped = mapper.map_names(read_names(names))
        source = {"path": str(names), "kind": "names"}
    else:
        classes, unmapped = mapper.map_wnids(read_wnids(wnids))
        source = {"path": str(wnids), "kind": "wnids"}
    if unmapped and not allow_unmapped:
        shown = ", ".join(repr(n) for n in unmapped[:20]) + (" ..." if len(unmapped) > 20 else "")
        raise ClassMapError(
            f"{len(unmapped)} class(es) map to no WordNet noun synset with a row in {vocab_path} "
            f"(within {MAX_DISTANCE} links): {shown}; add them to --overrides (name<TAB>wnid) "
            "or pass --allow-unmapped to leave them out"
        )
    if not classes:
        raise ClassMapError(f"no class of {source['path']} maps onto {vocab_path}")
    vocab_meta = {"path": str(vocab_path), "size": len(vocab), "sha256": vocab_sha256(vocab_path)}
    return ClassMap(classes, vocab_meta, source, unmapped)


def format_table(class_map: ClassMap) -> str:
    """name, synset, rows (with their synsets and the distance) and how, one class a line."""
    lines = []
    w_name = max([len(c.name) for c in class_map.classes] + [4])
    w_syn = max([len(c.synset) for c in class_map.classes] + [6])
    lines.append(f"{'#':>4}  {'name':<{w_name}}  {'synset':<{w_syn}}  {'d':>2}  rows  (how)")
    for c in class_map.classes:
        rows = ", ".join(f"{r}:{s}" for r, s in zip(c.rows, c.row_synsets or c.row_wnids, strict=True))
        lines.append(
            f"{c.index:>4}  {c.name:<{w_name}}  {c.synset:<{w_syn}}  {c.distance:>2}  {rows}  ({c.how})"
        )
    return "\n".join(lines)
