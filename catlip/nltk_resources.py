"""The NLTK data the method reads at run time: WordNet 3.0's reader, NLTK's search path, and the
check that commands run before labelling (WordNet 3.0 with ``dog.n.01`` at offset 2084071, a
tagger that tags a noun as a noun, Punkt that knows "Mr." as an abbreviation).

Getting the data onto a machine without NLTK's download server is provisioning, not the method:
``provision/nltk_data.py`` (``catlip setup-nltk``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

WORDNET_RESOURCE = "corpora/wordnet"
TAGGER_NAME = "averaged_perceptron_tagger_eng"
TAGGER_RESOURCE = f"taggers/{TAGGER_NAME}/"
PUNKT_RESOURCE = "tokenizers/punkt_tab/english/"
DOG_OFFSET = 2084071  # dog.n.01 in WordNet 3.0

PUNKT_CHECK = ("mr. smith saw a dog. it ran.", ["mr. smith saw a dog.", "it ran."])


class NltkDataError(RuntimeError):
    """The WordNet or tagger data is missing or wrong, with what to do about it."""


@dataclass(frozen=True)
class NltkDataStatus:
    wordnet: str  # directory NLTK reads WordNet from
    tagger: str  # directory of the tagger's JSON files
    source: str  # "found", "downloaded" or "built"
    punkt: str = ""  # directory of the English punkt_tab files


def add_to_nltk_path(directory: Path | str) -> None:
    import nltk

    directory = str(Path(directory).resolve())
    if directory not in nltk.data.path:
        nltk.data.path.insert(0, directory)


def wordnet():
    """NLTK's WordNet reader (``nltk.corpus.wordnet``), loaded on first use without its self-map.

    ``WordNetCorpusReader.__init__`` ends with ``self.map30 = self.map_wn()``: a map from WordNet
    3.0's synsets to the loaded WordNet's, for the Open Multilingual Wordnet's 3.0 offsets.
    ``map_wn`` skips it when ``get_version() == version``, comparing "3.0" with the corpus name
    "wordnet" (NLTK 3.10.4), so loading WordNet 3.0 reads index.sense (207k sense keys) twice to
    build the identity map: 3.9 of the 6.4 s a load takes on this project's CPU host, paid by every
    process that labels captions or maps class names. For WordNet 3.0 loaded from
    ``corpora/wordnet`` we return None, the value ``map_wn`` means for "no mapping needed"
    (``map30`` is read only by the multilingual readers, which then take the offsets as they are);
    any other request goes to NLTK.
    """
    from nltk.corpus import wordnet as reader
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    if not getattr(WordNetCorpusReader.map_wn, "skips_identity", False):
        nltk_map_wn = WordNetCorpusReader.map_wn

        def map_wn(self, version="wordnet"):
            if version == "wordnet" and self.get_version() == "3.0":
                return None  # WordNet 3.0 onto itself
            return nltk_map_wn(self, version)

        map_wn.skips_identity = True
        WordNetCorpusReader.map_wn = map_wn
    return reader


def check_nltk_data() -> NltkDataStatus:
    """Verify that NLTK finds WordNet 3.0, the English tagger and punkt_tab; raise NltkDataError if not."""
    import nltk

    wn = wordnet()
    try:
        wordnet_dir = str(nltk.data.find(WORDNET_RESOURCE))
        tagger_dir = str(nltk.data.find(TAGGER_RESOURCE))
        punkt_dir = str(nltk.data.find(PUNKT_RESOURCE))
    except LookupError as err:
        raise NltkDataError(
            "NLTK data missing: run `catlip setup-nltk` (or point NLTK_DATA at a directory that "
            f"holds {WORDNET_RESOURCE}, {TAGGER_RESOURCE} and {PUNKT_RESOURCE})"
        ) from err
    wn.ensure_loaded()
    version, offset = wn.get_version(), wn.synset("dog.n.01").offset()
    if version != "3.0" or offset != DOG_OFFSET:
        raise NltkDataError(
            f"WordNet at {wordnet_dir} is version {version} with dog.n.01 at offset {offset}; "
            f"CatLIP's synset ids need WordNet 3.0 (offset {DOG_OFFSET})"
        )
    from catlip.text import get_tagger  # NLTK's weights, loaded once for the check and the labeler

    tags = get_tagger().tag(["a", "dog", "catching", "a", "frisbee"])
    if tags[1] != "NN" or tags[4] != "NN":
        raise NltkDataError(f"the tagger at {tagger_dir} tags 'a dog catching a frisbee' as {tags}")
    from nltk.tokenize.punkt import PunktTokenizer

    text, expected = PUNKT_CHECK
    if (got := PunktTokenizer("english").tokenize(text)) != expected:
        raise NltkDataError(f"punkt_tab at {punkt_dir} splits {text!r} as {got} (expected {expected})")
    return NltkDataStatus(wordnet=wordnet_dir, tagger=tagger_dir, source="found", punkt=punkt_dir)
