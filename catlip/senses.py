"""The ``catlip-2`` labeler: caption nouns -> the WordNet sense the caption means.

catlip-1 and corenet look every noun up as ``{lemma}.n.01`` and keep it only when the synset is
named after the lemma. That splits "hot dog" into dog.n.01, reads "kite" as a bank check, and
drops "boy" (male_child.n.01), "couch" (sofa.n.01) and "tv". This labeler works by general WordNet
rules, with no word lists:

1. **Nouns.** NN* tokens (tagged sentence by sentence, as catlip-1), plus tokens the tagger calls
   an adjective, verb or adverb although WordNet has no sense of that part of speech for them but
   has a noun ("a baby elephant", "playing frisbee").
2. **Compounds.** Right to left (English noun phrases end in their head), the longest run of up to
   :data:`MAX_COMPOUND` adjacent open-class tokens ending in a noun that is a WordNet noun lemma,
   written with "_" or as one word (hot_dog, tennis_racket, wineglass, cellphone), is one noun
   and its parts are not labelled. A run whose senses all name individuals (white_house.n.02) is
   not a compound of a caption.
3. **Candidates.** The noun's base forms (WordNet's morphology, shortest first; the token itself
   only when it is the only form); of several forms, the first with a sense named after it
   ("vases": vase, not vas, whose only sense is vessel.n.01). Every noun sense of that form is a
   candidate, whatever its name (boy -> male_child.n.01); senses that are instances (named people
   and places) only when there is nothing else.
4. **Prior.** ``3`` for a concrete sense (lexicographer file artifact, animal, food, plant,
   person, body, object or substance; ``1.5`` for a place: a park, but also a region of the
   zodiac), ``+ log(1 + SemCor count)`` of the form in that sense,
   ``- 0.5`` per WordNet rank, ``+ 2`` when the sense is a part of another candidate or of one of
   its kinds (the toilet bowl of the toilet room, the banana fruit of the banana plant): a caption
   names what can be seen and held.
5. **Context.** Each candidate gains 1 per word shared between its signature (gloss and example
   words, lemma names of itself, its hypernyms, hyponyms, parts and wholes) and the caption's other
   nouns, and 1 per other noun whose leading candidate is in the same lexicographer file (a mouse
   among a keyboard and a laptop is an artifact).
6. **Corpus.** Fitted once on the captions being labelled (:class:`SenseTable`, written with the
   vocabulary): for a noun that heads compounds in the corpus, the sense most of those compounds
   are kinds of gains 3, when so many agree that chance is unlikely (one-sided sign test, p <
   0.05: 40 "dining/dinner table" against 22 "coffee/kitchen table" make a bare "table"
   table.n.03, the one laid for a meal; 31 "baseball bat" make "bat" bat.n.05, not the animal; 3
   "public toilet" change nothing); and each sense gains half its mean context score over the
   noun's occurrences (one sense per corpus, softly).
7. **Members.** A collective noun whose sense has exactly one kind of member also labels the member
   (people.n.01 -> person.n.01, flock.n.02 -> bird.n.01).

The candidate with the highest total is the label. The weights were set on half of the COCO
val2017 dev images of ``perf/bench_label_quality.py`` and checked on the other half; the bench
measures each step's effect (``--ablations``).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

from catlip.captions import cut_caption
from catlip.text import clean_caption, get_tagger, split_sentences, word_tokenize
from catlip.wordnet_nouns import WordNetNouns

NAME = "catlip-2"
SENSES_FORMAT = "catlip-senses/1"
MAX_COMPOUND = 4  # tokens; WordNet's noun collocations of 5+ words are names of things, not objects
CONCRETE = frozenset(
    "noun.artifact noun.animal noun.food noun.plant noun.person noun.body noun.object noun.substance".split()
)
W_CONCRETE, W_PLACE, W_RANK, W_PART = 3.0, 1.5, 0.5, 2.0
W_ATTESTED, W_SUPPORT = 3.0, 0.5
ATTESTED_P = 0.05  # a head noun's corpus sense counts when its compounds could hardly be chance
MIN_SUPPORT = 3  # occurrences before a noun's mean context score counts
CACHE_LIMIT = 1 << 20  # tokens and word runs remembered per labeler (each cache ~100-200 MB at most)

_WORD_RE = re.compile(r"[a-z][a-z\-]*")
_GLOSS_WORD_RE = re.compile(r"[a-z]+")
# Tags that never belong inside a noun compound: determiners, prepositions, pronouns, conjunctions,
# numbers, particles, modals.
_CLOSED_TAGS = frozenset("CC CD DT EX IN MD PDT POS PRP PRP$ RP TO WDT WP WP$ WRB".split())
_RESCUE_POS = {"J": ("a", "s"), "V": ("v",), "R": ("r",)}  # tag letter -> WordNet parts of speech
# Function words left out of sense signatures (they say nothing about a sense).
_STOP = frozenset(
    "a an the of or and in on at for to with that which by as is are be been being its it this these "
    "those from into onto than then such other any some all each used use usually especially often "
    "something someone one two more most very not no can may also etc who whom whose what when where "
    "how make made having has have had do does done so out up down over under".split()
)

Key = tuple[str, ...]  # a noun's base forms, the key of its candidates


@dataclass(eq=False)
class Sense:
    """What the labeler needs of one noun synset, computed once (the signature when first read:
    most nouns' priors decide without the context)."""

    key: str  # wnid, n02084071
    name: str  # dog.n.01
    lexname: str  # noun.animal
    member: str | None  # the wnid of its only kind of member (people.n.01 -> person.n.01)
    offset: int

    @cached_property
    def signature(self) -> frozenset[str]:
        """Gloss and example words (with their noun and verb base forms), and the lemma words of
        the synset, its hypernyms, hyponyms, parts, wholes, members and substances."""
        nouns = _shared()
        synset = nouns.synset(self.offset)
        sig: set[str] = set()
        for text in (synset.definition, *synset.examples):
            for w in _GLOSS_WORD_RE.findall(text.lower()):
                if w not in _STOP:
                    sig.update(_word_forms(w))
        for other in (self.offset, *synset.related("@", "~", "%p", "#p", "#m", "%m", "%s", "#s")):
            for name in nouns.synset(other).lemmas:
                sig.update(name.lower().split("_"))
        return frozenset(sig - _STOP)


@dataclass(frozen=True)
class Unit:
    """A noun of a caption: its base forms, and for a compound the base forms of its head."""

    key: Key
    head: Key | None = None


def _table_key(key: Key) -> str:
    return " ".join(key)


@dataclass
class SenseTable:
    """Corpus sense priors (step 6 of the module docstring): noun key -> {synset name: bonus}.

    Fitted from :class:`FitCounts` of the captions a vocabulary is built on, saved beside it, and
    identified by :attr:`sha256`, which the labeler's record carries into packs and checkpoints."""

    entries: dict[str, dict[str, float]] = field(default_factory=dict)
    captions: int = 0

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def to_json(self) -> str:
        body = {"format": SENSES_FORMAT, "labeler": NAME, "captions": self.captions, "entries": self.entries}
        return json.dumps(body, sort_keys=True, indent=0) + "\n"

    def save(self, path: Path | str) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path | str) -> SenseTable:
        from catlip.readers import load_json

        path = Path(path)
        raw = load_json(path)
        if not isinstance(raw, dict) or raw.get("format") != SENSES_FORMAT:
            raise ValueError(
                f"{path}: not a catlip sense table ({SENSES_FORMAT}); rebuild it with `catlip vocab`"
            )
        entries = raw.get("entries")
        if not isinstance(entries, dict) or not all(
            isinstance(v, dict) and all(isinstance(b, int | float) for b in v.values())
            for v in entries.values()
        ):
            raise ValueError(f"{path}: malformed sense table entries; rebuild it with `catlip vocab`")
        return cls({k: dict(v) for k, v in entries.items()}, int(raw.get("captions", 0)))

    def bonus(self, key: Key) -> dict[str, float]:
        return self.entries.get(_table_key(key), {})


@dataclass
class FitCounts:
    """What a chunk of captions says about senses; chunks add up (:meth:`merge`) in any grouping."""

    captions: int = 0
    attested: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    attested_n: Counter = field(default_factory=Counter)
    support: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    support_n: Counter = field(default_factory=Counter)

    def merge(self, other: FitCounts) -> None:
        self.captions += other.captions
        for mine, theirs in ((self.attested, other.attested), (self.support, other.support)):
            for k, v in theirs.items():
                mine[k].update(v)
        self.attested_n.update(other.attested_n)
        self.support_n.update(other.support_n)

    def table(self) -> SenseTable:
        entries: dict[str, dict[str, float]] = defaultdict(dict)
        for k, n in self.support_n.items():
            if n >= MIN_SUPPORT:
                for name, total in self.support[k].items():
                    if total:
                        entries[k][name] = round(W_SUPPORT * total / n, 4)
        for k, n in self.attested_n.items():
            if self.attested[k]:
                top = max(self.attested[k].values())
                if _sign_test(top, n) < ATTESTED_P:
                    for name in sorted(s for s, c in self.attested[k].items() if c == top):
                        entries[k][name] = round(entries[k].get(name, 0.0) + W_ATTESTED, 4)
        return SenseTable({k: dict(sorted(v.items())) for k, v in sorted(entries.items())}, self.captions)


class SenseLabeler:
    """Caption -> unique wnids of its nouns' senses, in order (see the module docstring).

    ``senses``: the corpus table (step 6), or None before fitting. ``context``, ``rescue``,
    ``compounds`` and ``members`` switch steps off, for measuring them."""

    official = False

    def __init__(
        self,
        *,
        pos_filter: bool = True,
        senses: SenseTable | None = None,
        context: bool = True,
        rescue: bool = True,
        compounds: bool = True,
        members: bool = True,
    ) -> None:
        self.pos_filter = pos_filter
        self.senses = senses
        self.context, self.rescue, self.compounds, self.members = context, rescue, compounds, members
        self._nouns = _shared()
        self._wn = self._nouns._wn
        self._tagger = get_tagger() if pos_filter else None
        self._cands: dict[Key, tuple[tuple[Sense, float], ...]] = {}
        self._forms: dict[str, Key] = {}
        self._compound: dict[tuple[str, ...], Key | None] = {}
        self._rescued: dict[tuple[str, str], bool] = {}
        split_sentences("a. b.")  # fails now, naming `catlip setup-nltk`, if punkt_tab is missing

    # ------------------------------------------------------------------------------ text -> units
    def clean(self, caption: object) -> str:
        """The text the labels are read from: the caption cut and cleaned."""
        return clean_caption(cut_caption(caption)[0])

    def sentences(self, caption: object) -> list[list[str]]:
        return [word_tokenize(s) for s in split_sentences(self.clean(caption))]

    def units(self, caption: object) -> list[Unit]:
        """The caption's nouns, compounds whole, in caption order."""
        out: list[Unit] = []
        for sent in self.sentences(caption):
            out += self._sentence_units(sent)
        return out

    def _sentence_units(self, sent: list[str]) -> list[Unit]:
        word = [bool(_WORD_RE.fullmatch(t)) for t in sent]
        if self._tagger is None:
            noun, open_ = word, word
        else:
            tags = self._tagger.tag(sent)
            noun = [
                t.startswith("NN") or (self.rescue and self._is_rescued(w, t))
                for w, t in zip(sent, tags, strict=True)
            ]
            open_ = [w and t not in _CLOSED_TAGS for w, t in zip(word, tags, strict=True)]
        found: list[Unit] = []
        j = len(sent) - 1
        while j >= 0:
            if self.compounds and noun[j] and word[j]:
                for i in range(max(0, j - MAX_COMPOUND + 1), j):  # longest first
                    if all(open_[i : j + 1]):
                        key = self._compound_key(tuple(sent[i : j + 1]))
                        if key:
                            found.append(Unit(key, self._noun_forms(sent[j]) or None))
                            break
                else:
                    i = j
                if i < j:
                    j = i - 1
                    continue
            if noun[j] and _WORD_RE.search(sent[j]):
                key = self._noun_forms(sent[j])
                if key:
                    found.append(Unit(key))
            j -= 1
        found.reverse()
        return found

    def _is_rescued(self, token: str, tag: str) -> bool:
        """A token tagged JJ/VB/RB that WordNet knows only as a noun (step 1)."""
        memo = (token, tag[0])
        if memo not in self._rescued:
            if len(self._rescued) >= CACHE_LIMIT:
                self._rescued.clear()
            pos = _RESCUE_POS.get(tag[0])
            self._rescued[memo] = bool(
                pos
                and _WORD_RE.fullmatch(token)
                and self._noun_forms(token)
                and not any(self._wn._morphy(token, p) for p in pos)
            )
        return self._rescued[memo]

    def _noun_forms(self, token: str) -> Key:
        """Base forms as catlip-1 orders them: shortest first, not the token itself unless alone."""
        if token not in self._forms:
            if len(self._forms) >= CACHE_LIMIT:
                self._forms.clear()
            forms = self._wn._morphy(token, "n")
            if forms:
                first = min(forms, key=len)
                forms = [first, *(f for f in sorted(forms, key=len) if f != first and f != token)]
            self._forms[token] = tuple(forms)
        return self._forms[token]

    def _compound_key(self, words: tuple[str, ...]) -> Key | None:
        """The base forms of ``words`` as one WordNet noun ("_"-joined, or as one word), or None."""
        if words not in self._compound:
            if len(self._compound) >= CACHE_LIMIT:  # web text has more word runs than memory
                self._compound.clear()
            found = None
            for joined in ("_".join(words), "".join(words)):
                forms = [f for f in self._wn._morphy(joined, "n") if self._nouns.senses(f)]
                synsets = [self._nouns.synset(o) for f in forms for o in self._nouns.senses(f)]
                if synsets and not all(s.is_instance for s in synsets):
                    found = tuple(sorted(forms, key=len))
                    break
            self._compound[words] = found
        return self._compound[words]

    # --------------------------------------------------------------------------- senses, priors
    def candidates(self, key: Key) -> tuple[tuple[Sense, float], ...]:
        """(sense, prior) of a noun, best prior first (steps 3, 4 and 6's corpus bonus)."""
        if key not in self._cands:
            bonus = self.senses.bonus(key) if self.senses else {}
            out = [(sense, prior + bonus.get(sense.name, 0.0)) for sense, prior in _base_candidates(key)]
            out.sort(key=lambda c: -c[1])  # stable: WordNet's order among equal priors
            self._cands[key] = tuple(out)
        return self._cands[key]

    # -------------------------------------------------------------------------------- choosing
    def context_scores(
        self, others: list[tuple[frozenset[str], str | None]], senses: Iterable[Sense]
    ) -> list[int]:
        """Step 5: each sense's score from the caption's other nouns, given as (their words, the
        lexicographer file of their leading candidate)."""
        words = frozenset().union(*(w for w, _ in others)) if others else frozenset()
        lexnames = [lex for _, lex in others if lex is not None]
        return [len(sense.signature & words) + lexnames.count(sense.lexname) for sense in senses]

    def synsets(self, caption: object) -> list[str]:
        """Unique wnids of the caption's nouns, in order of first appearance. Never raises on text."""
        units = self.units(caption)
        cands = [self.candidates(u.key) for u in units]
        ctx = _context(units, cands)
        # the most any candidate can gain from the context: every other noun's words and file
        reach = sum(len(w) + (lex is not None) for w, lex in ctx)
        out: list[str] = []
        for j, mine in enumerate(cands):
            if not mine:
                continue
            sense = mine[0][0]
            if self.context and len(mine) > 1 and mine[0][1] - mine[1][1] < reach - len(ctx[j][0]) - 1:
                scores = self.context_scores(ctx[:j] + ctx[j + 1 :], (c for c, _ in mine))
                best = max(range(len(mine)), key=lambda i: (mine[i][1] + scores[i], -i))
                sense = mine[best][0]
            for key in (sense.key, sense.member if self.members else None):
                if key is not None and key not in out:
                    out.append(key)
        return out

    def phrase_sense(self, words: list[str]) -> tuple[Sense, str] | None:
        """The sense of a noun phrase given alone (a class name, "stop sign"): the whole phrase
        where it is one WordNet noun (a compound, or a word's base form), else its last word's
        sense with the others as context (steps 3-6, with no tagger: a name is a noun phrase).
        With how it was found; None when WordNet has no noun for it."""
        words = [w.lower() for w in words if w]
        if not words:
            return None
        whole = self._compound_key(tuple(words)) if len(words) > 1 else self._noun_forms(words[0])
        if whole and self.candidates(whole):
            return self.candidates(whole)[0][0], "lemma"
        head = self._noun_forms(words[-1])
        mine = self.candidates(head) if head else ()
        if not mine:
            return None
        others = [(frozenset({w, *self._noun_forms(w)}), None) for w in words[:-1]]
        scores = self.context_scores(others, (c for c, _ in mine))
        best = max(range(len(mine)), key=lambda i: (mine[i][1] + scores[i], -i))
        return mine[best][0], f"head noun {words[-1]!r}"

    def name_of(self, key: str) -> str:
        """Synset name (``dog.n.01``) of a wnid this labeler returned."""
        return self._nouns.name(int(key[1:]))

    # ------------------------------------------------------------------------------------- fit
    def fit_counts(self, captions: Iterable[object]) -> FitCounts:
        """Step 6's statistics of ``captions``, from this (unfitted) labeler's priors and context."""
        counts = FitCounts()
        for caption in captions:
            counts.captions += 1
            units = self.units(caption)
            cands = [self.candidates(u.key) for u in units]
            ctx = _context(units, cands)
            for j, unit in enumerate(units):
                if unit.head:  # which senses of the head this compound is a kind of
                    kinds = [self._nouns.ancestors(s.offset) for s, _ in cands[j]]
                    head = _table_key(unit.head)
                    counts.attested_n[head] += 1
                    for sense, _ in self.candidates(unit.head):
                        if any(sense.offset in ancestors for ancestors in kinds):
                            counts.attested[head][sense.name] += 1
                if len(cands[j]) > 1 and len(units) > 1:
                    key = _table_key(unit.key)
                    counts.support_n[key] += 1
                    others = ctx[:j] + ctx[j + 1 :]
                    for (sense, _), score in zip(
                        cands[j], self.context_scores(others, (c for c, _ in cands[j])), strict=True
                    ):
                        counts.support[key][sense.name] += score
        return counts


@lru_cache(maxsize=1)
def _shared() -> WordNetNouns:
    """This process's WordNet nouns (a forked worker inherits them, read-only)."""
    from catlip.nltk_resources import wordnet

    wn = wordnet()
    wn.ensure_loaded()
    return WordNetNouns(wn)


_SENSES: dict[int, Sense] = {}
_BASE: dict[Key, tuple[tuple[Sense, float], ...]] = {}


def _sense(offset: int) -> Sense:
    """A synset as the labeler reads it, made once per process."""
    if offset in _SENSES:
        return _SENSES[offset]
    nouns = _shared()
    synset = nouns.synset(offset)
    members = synset.related("%m")
    sense = Sense(
        key=synset.wnid,
        name=nouns.name(offset),
        lexname=synset.lexname,
        member=f"n{members[0]:08d}" if len(members) == 1 else None,
        offset=offset,
    )
    _SENSES[offset] = sense
    return sense


_FORMS: dict[str, tuple[str, ...]] = {}
_KEY_WORDS: dict[Key, frozenset[str]] = {}


def _context(
    units: list[Unit], cands: list[tuple[tuple[Sense, float], ...]]
) -> list[tuple[frozenset[str], str | None]]:
    """Each noun as context for the others: its words, and the file of its leading candidate."""
    return [(_key_words(u.key), c[0][0].lexname if c else None) for u, c in zip(units, cands, strict=True)]


def _key_words(key: Key) -> frozenset[str]:
    """The words of a noun's base forms (hot_dog -> hot, dog), for other nouns' context."""
    if key not in _KEY_WORDS:
        _KEY_WORDS[key] = frozenset(w for form in key for w in form.split("_"))
    return _KEY_WORDS[key]


def _word_forms(word: str) -> tuple[str, ...]:
    """A gloss word and its noun and verb base forms ("flown" -> fly)."""
    if word not in _FORMS:
        morphy = _shared()._wn._morphy
        _FORMS[word] = (word, *morphy(word, "n"), *morphy(word, "v"))
    return _FORMS[word]


def _base_candidates(key: Key) -> tuple[tuple[Sense, float], ...]:
    """(sense, prior) of a noun's candidates in WordNet's order, before any corpus bonus (steps 3-4)."""
    if key in _BASE:
        return _BASE[key]
    nouns = _shared()
    per_form = [(f, nouns.senses(f)) for f in key if nouns.senses(f)]
    if len(per_form) > 1:  # of several base forms, the first with a sense named after it
        named = [(f, ss) for f, ss in per_form if any(nouns.name(o).split(".")[0] == f for o in ss)]
        per_form = named[:1] or per_form
    ranked: list[tuple[int, str, int]] = []
    for form, offsets in per_form:
        for o in offsets:
            if all(o != r[0] for r in ranked):
                ranked.append((o, form, len(ranked)))
    if any(not nouns.synset(o).is_instance for o, _, _ in ranked):
        ranked = [r for r in ranked if not nouns.synset(r[0]).is_instance]
    offsets = {o for o, _, _ in ranked}
    out = []
    for o, form, rank in ranked:
        sense = _sense(o)
        prior = _concreteness(sense.lexname) + math.log1p(nouns.count(form, o)) - W_RANK * rank
        out.append((sense, prior + W_PART * _is_part_of_another(o, offsets)))
    _BASE[key] = tuple(out)
    return _BASE[key]


def _concreteness(lexname: str) -> float:
    """Step 4's bonus: a thing a photo can show; a place (a park, a beach, but also a region of
    the zodiac) half as much."""
    return W_CONCRETE if lexname in CONCRETE else W_PLACE if lexname == "noun.location" else 0.0


def _is_part_of_another(offset: int, candidates: set[int]) -> bool:
    """A synset is a part of another candidate, or of one of that candidate's kinds."""
    nouns = _shared()
    wholes = set(nouns.synset(offset).related("#p"))
    return bool(wholes) and any(
        other != offset and (other in wholes or not wholes.isdisjoint(nouns.synset(other).related("~")))
        for other in candidates
    )


def _sign_test(wins: int, n: int) -> float:
    """One-sided sign test: the chance of ``wins`` or more of ``n`` fair coin flips."""
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n
