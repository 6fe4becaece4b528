"""corenet's released vocabulary, a pickled ``{"n5928118": count}`` (part of speech + unpadded WordNet
3.0 offset, most frequent first; the order is the head's row order), read with an unpickler that
resolves no global at all, so a pickle that names a function (the way pickles run code) is refused
before anything runs; ``write_corenet_vocab`` writes it as our vocabulary TSV (catlip/labels.py's
``Vocabulary``: wnid, synset name and lemma from WordNet).
"""

from __future__ import annotations

import io
import pickle
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from catlip.convert.state import InteropError


class RefusedPickle(pickle.UnpicklingError):
    """A pickle that names a global (a class or function): this reader loads plain data only."""


class _DataOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings and numbers; any global is refused before it is looked up."""

    def find_class(self, module: str, name: str) -> Any:
        raise RefusedPickle(
            f"the pickle names the global {module}.{name}; a vocabulary is plain data (a dict of str -> int), "
            "so it is refused without running anything"
        )


def read_corenet_pickle(path: str | Path) -> dict[str, int]:
    """corenet's vocabulary pickle ({"n5928118": count, ...}, in its order), loaded with no globals."""
    data = Path(path).read_bytes()
    try:
        obj = _DataOnlyUnpickler(io.BytesIO(data)).load()
    except RefusedPickle as err:
        raise InteropError(f"{path}: {err}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise InteropError(f"{path}: not a readable pickle ({err})") from None
    if not isinstance(obj, dict):
        raise InteropError(
            f"{path}: holds a {type(obj).__name__}, expected corenet's dict {{'n5928118': count}}"
        )
    for key, count in obj.items():
        if not (isinstance(key, str) and re.fullmatch(r"n\d{1,8}", key)):
            raise InteropError(
                f"{path}: key {key!r} is not corenet's pos + offset ('n' + WordNet noun offset)"
            )
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise InteropError(f"{path}: count of {key} is {count!r}, not a non-negative integer")
    return obj


def _wordnet_name(offset: int) -> str:
    from catlip.nltk_resources import wordnet

    with warnings.catch_warnings():  # NLTK warns, then returns None, for an offset it does not know
        warnings.simplefilter("ignore")
        synset = wordnet().synset_from_pos_and_offset("n", offset)
    if synset is None:
        raise LookupError(f"no noun synset at offset {offset}")
    return synset.name()


def read_corenet_vocab(
    path: str | Path, *, vocab_size: int | None = None, synset_name: Callable[[int], str] | None = None
):
    """corenet's vocabulary pickle as our :class:`catlip.labels.Vocabulary`, in corenet's order (the
    order of its head's rows), cut to its first ``vocab_size`` entries as corenet's dataset does.
    ``synset_name(offset)`` gives a synset's name (default: NLTK's WordNet 3.0, as ``catlip vocab``)."""
    from catlip.labels import Vocabulary, wnid

    counts = read_corenet_pickle(path)
    keys = list(counts)[:vocab_size] if vocab_size is not None else list(counts)
    name_of = synset_name or _wordnet_name
    try:
        from nltk.corpus.reader.wordnet import WordNetError
    except ImportError:  # a supplied lookup without NLTK installed
        WordNetError = LookupError  # noqa: N806
    wnids, names = [], []
    for key in keys:
        offset = int(key[1:])
        try:
            names.append(name_of(offset))
        except (WordNetError, LookupError, ValueError) as err:
            raise InteropError(f"{path}: {key} is no WordNet 3.0 noun synset ({err})") from None
        wnids.append(wnid(offset))
    return Vocabulary(wnids, names, [counts[k] for k in keys])


def write_corenet_vocab(
    pkl: str | Path,
    out: str | Path,
    *,
    vocab_size: int | None = None,
    synset_name: Callable[[int], str] | None = None,
) -> Path:
    """Convert corenet's vocabulary pickle to our vocabulary TSV (``catlip vocab``'s format)."""
    vocab = read_corenet_vocab(pkl, vocab_size=vocab_size, synset_name=synset_name)
    vocab.save(out)
    return Path(out)
