"""WordNet 3.0's noun synsets, read once into memory: the catlip-2 labeler's view of WordNet.

NLTK reads a synset by seeking in ``data.noun`` through its own stream reader, and a lemma's SemCor
count by a binary search of ``index.sense``: 0.4 ms a lemma, and most of a labeler's first minutes
were spent there (every new word of a caption loads its senses, their neighbours and counts). Here
``data.noun`` (15 MB) is read whole and parsed line by line on demand, and the noun counts of
``index.sense`` are read once (0.3 s): a new word costs ~0.1 ms. The synsets, their names and the
order of a lemma's senses are NLTK's (the same files; names follow NLTK's rule, the first lemma and
its sense number); tests compare them with NLTK's for every noun synset the labeler meets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

_QUOTED_RE = re.compile(r'"([^"]*)"')
_QUOTES_RE = re.compile(r'"[^"]*"')


@dataclass(frozen=True, eq=False)
class NounSynset:
    """One line of ``data.noun``: the fields the labeler reads."""

    offset: int
    lexname: str  # noun.animal
    lemmas: tuple[str, ...]  # as written, case kept ("Japanese_banana")
    pointers: tuple[tuple[str, int], ...]  # (symbol, noun offset): "@" hypernym, "~" hyponym, ...
    definition: str
    examples: tuple[str, ...]

    def related(self, *symbols: str) -> list[int]:
        return [offset for symbol, offset in self.pointers if symbol in symbols]

    @property
    def wnid(self) -> str:
        return f"n{self.offset:08d}"

    @property
    def is_instance(self) -> bool:
        """A named individual (a person, a city): it has an instance hypernym."""
        return any(symbol == "@i" for symbol, _ in self.pointers)


class WordNetNouns:
    """Noun synsets by offset, a lemma's senses in WordNet's order, names, SemCor counts."""

    def __init__(self, wn: Any) -> None:
        """``wn``: NLTK's loaded WordNet 3.0 reader (its index and lexicographer file names)."""
        self._wn = wn
        root = Path(getattr(wn.root, "path", str(wn.root)))
        self._lines: dict[int, str] = {}
        with open(root / "data.noun", encoding="utf-8") as f:
            for line in f:
                if not line.startswith(" "):  # the licence header's lines start with two spaces
                    self._lines[int(line[:8])] = line
        self._root = root
        self._index = wn._lemma_pos_offset_map
        self._synsets: dict[int, NounSynset] = {}
        self._names: dict[int, str] = {}
        self._ancestors: dict[int, frozenset[int]] = {}

    def senses(self, lemma: str) -> list[int]:
        """The noun synsets of a lemma (lower case, "_" for spaces), in WordNet's sense order."""
        entry = self._index.get(lemma)
        return list(entry.get("n", ())) if entry else []

    def synset(self, offset: int) -> NounSynset:
        if offset not in self._synsets:
            fields, _, gloss = self._lines[offset].partition("|")
            tokens = fields.split()
            n_lemmas = int(tokens[3], 16)
            lemmas = tuple(tokens[4 + 2 * i] for i in range(n_lemmas))
            at = 4 + 2 * n_lemmas
            pointers = []
            for i in range(int(tokens[at])):
                symbol, target, pos = tokens[at + 1 + 4 * i : at + 4 + 4 * i]
                if pos == "n":
                    pointers.append((symbol, int(target)))
            self._synsets[offset] = NounSynset(
                offset=offset,
                lexname=self._wn._lexnames[int(tokens[1])],
                lemmas=lemmas,
                pointers=tuple(pointers),
                definition=_QUOTES_RE.sub("", gloss).strip().strip("; "),
                examples=tuple(_QUOTED_RE.findall(gloss)),
            )
        return self._synsets[offset]

    def name(self, offset: int) -> str:
        """NLTK's synset name: the first lemma, lower-cased, and this synset's sense number of it."""
        if offset not in self._names:
            lemma = self.synset(offset).lemmas[0].lower()
            self._names[offset] = f"{lemma}.n.{self.senses(lemma).index(offset) + 1:02d}"
        return self._names[offset]

    def ancestors(self, offset: int) -> frozenset[int]:
        """Every hypernym and instance hypernym of a synset, transitively."""
        if offset not in self._ancestors:
            out: set[int] = set()
            for parent in self.synset(offset).related("@", "@i"):
                out |= {parent} | self.ancestors(parent)
            self._ancestors[offset] = frozenset(out)
        return self._ancestors[offset]

    def count(self, lemma: str, offset: int) -> int:
        """SemCor's tag count of ``lemma`` (lower case) in that sense (NLTK's ``Lemma.count``)."""
        return self._counts.get((lemma, offset), 0)

    @cached_property
    def _counts(self) -> dict[tuple[str, int], int]:
        out: dict[tuple[str, int], int] = {}
        with open(self._root / "index.sense", encoding="utf-8") as f:
            for line in f:
                key, offset, _, count = line.split()
                if count != "0" and key[key.index("%") + 1] == "1":  # noun senses that SemCor tagged
                    out[key[: key.index("%")].lower(), int(offset)] = int(count)
        return out
