"""Caption -> synsets -> label indices: tagging, lemmatising, the official switch, bad input, vocab."""

from __future__ import annotations

import json

import nltk
import pytest
from nltk.corpus import wordnet as wn
from nltk.stem import WordNetLemmatizer

from catlip.labels import CaptionLabeler, LabelEncoder, Vocabulary, VocabularyError, make_labeler, wnid
from catlip.text import clean_caption_official
from catlip.vocab import build_vocabulary

pytestmark = pytest.mark.usefixtures("nltk_ready")


def names(labeler, caption):
    return [labeler.name_of(k) for k in labeler.synsets(caption)]


@pytest.fixture(scope="module")
def labeler():
    return CaptionLabeler()


def test_wnid_is_imagenet_style():
    assert wnid(wn.synset("dog.n.01").offset()) == "n02084071"


def test_nouns_are_tagged_and_lemmatised(labeler):
    assert names(labeler, "Two dogs chasing the cats near three churches.") == [
        "dog.n.01",
        "cat.n.01",
        "church.n.01",
    ]
    # irregular plurals come from WordNet's exception lists
    assert names(labeler, "mice and women and children") == ["mouse.n.01", "woman.n.01", "child.n.01"]


def test_men_falls_through_to_man(labeler):
    # morphy("men") = ["men", "man"]; "men.n.01" is work_force.n.01, so its name does not match and
    # the next lemma is tried. corenet keeps only the first lemma and loses the word.
    assert names(labeler, "three men on a bench") == ["man.n.01", "bench.n.01"]
    assert names(CaptionLabeler(official=True), "three men on a bench") == ["three.n.01", "bench.n.01"]


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        ("her teeth", ["tooth.n.01"]),  # teeth.n.01 is dentition.n.02; tooth from the exception list
        ("graffiti on a wall", ["graffito.n.01", "wall.n.01"]),
        ("two vases", ["vase.n.01"]),  # vas.n.01 is vessel.n.01; vase is the other base form
        ("a plate of cookies", ["cookie.n.01"]),  # cooky.n.01 is cookie.n.02
        # the token unchanged is never the fallback: these plural-only senses are wrong here
        ("the ways to the beach", ["beach.n.01"]),  # not ways.n.01, a slipway
        ("a dog between its masters feet", ["dog.n.01", "foot.n.01"]),  # not the poet masters.n.01
        ("taxis on a street", ["street.n.01"]),  # not taxis.n.01, a cell's movement
        ("architectural elements", []),  # not elements.n.01, the weather
    ],
)
def test_second_lemma_is_a_base_form_never_the_token(labeler, caption, expected):
    assert names(labeler, caption) == expected


def test_sentence_final_periods_do_not_hide_nouns(labeler):
    caption = "A view of a motorcycle. The picture is very close."
    assert names(labeler, caption) == ["motorcycle.n.01", "picture.n.01"]
    # the official mode splits sentences too (as corenet's nltk.word_tokenize does)
    assert "motorcycle.n.01" in names(CaptionLabeler(official=True), caption)
    assert labeler.sentences(caption)[0][-2:] == ["motorcycle", "."]


@pytest.mark.parametrize(
    "caption",
    ["a+dog+on+a+beach", "A%20dog%20on%20a%20beach", "ａ ｄｏｇ ｏｎ ａ ｂｅａｃｈ", "a dog on a beach"],
)
@pytest.mark.parametrize("mode", [{}, {"official": True}])
def test_web_alt_text_is_decoded(caption, mode):
    assert names(CaptionLabeler(**mode), caption) == ["dog.n.01", "beach.n.01"]


def test_pos_filter_drops_verbs_and_numbers(labeler):
    caption = "people watch a clock on the wall"
    assert names(labeler, caption) == ["people.n.01", "clock.n.01", "wall.n.01"]
    unfiltered = CaptionLabeler(pos_filter=False)
    assert names(unfiltered, caption) == ["people.n.01", "watch.n.01", "clock.n.01", "wall.n.01"]


def test_nouns_are_nltk_nn_tags(labeler):
    text = "a large brown dog runs across the green field with a red frisbee"
    tokens = nltk.word_tokenize(text, preserve_line=True)
    expected = [w for w, t in nltk.pos_tag(tokens) if t.startswith("NN")]
    assert labeler.nouns(text) == expected == ["dog", "field", "frisbee"]


def test_shortest_lemma_first_and_name_must_match(labeler):
    # morphy("glasses") = ["glasses", "glass"]: the shortest lemma wins, as in NLTK's lemmatizer
    assert names(labeler, "a man with glasses") == ["man.n.01", "glass.n.01"]
    assert names(labeler, "persons") == ["person.n.01"]
    # "one.n.01" is the number: a name match, but the tagger calls "one" a CD, not a noun
    assert names(labeler, "one dog") == ["dog.n.01"]


def _corenet_labels(caption: str, tag: bool = True, words: dict | None = None) -> list[str]:
    """corenet's _convert_caption_to_labels written out with plain NLTK calls (first-seen order).
    ``tag=False`` leaves out the tagging whose result corenet ignores, and ``words`` remembers each
    word's lookup (a pure function of the word): the same labels, for all 25,014 captions in CI."""
    text = clean_caption_official(caption)
    splitter = nltk.tokenize.punkt.PunktSentenceTokenizer()
    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
        tokens = nltk.word_tokenize(text)
    except LookupError:
        tokens = [t for s in splitter.tokenize(text) for t in nltk.word_tokenize(s, preserve_line=True)]
    if tag:
        nltk.pos_tag(tokens)  # corenet tags and then ignores the tags
    out = []
    for word in tokens:
        if words is not None and word in words:
            key = words[word]
        else:
            key = None
            try:
                lemma = WordNetLemmatizer().lemmatize(word)
                synset = wn.synset(f"{lemma}.n.01")
                if synset.name() == f"{lemma}.n.01":
                    key = f"n{synset.offset():08d}"
            except Exception:  # noqa: BLE001 - exactly corenet's handling
                pass
            if words is not None:
                words[word] = key
        if key is not None and key not in out:
            out.append(key)
    return out


class _TokenFallbackLabeler(CaptionLabeler):
    """The second-lemma step as it was: every base form, shortest first, the token itself too."""

    def _lemmas(self, token):
        return sorted(self._wn._morphy(token, "n"), key=len) or [token]


def test_default_differs_from_official_only_by_the_pos_filter_and_base_forms(shared_data):
    """On the 25,014 COCO val2017 captions: with the POS filter off, the default mode gives the
    official labels plus the synsets its second base form recovers, and nothing else."""
    from collections import Counter

    from catlip.captions import iter_captions

    captions = [c for _, c in iter_captions(shared_data / "coco_captions_val2017.json")]
    official, default = CaptionLabeler(official=True), CaptionLabeler(pos_filter=False)
    old = _TokenFallbackLabeler(pos_filter=False)
    extra, dropped = Counter(), Counter()
    for caption in captions:
        ours, theirs = default.synsets(caption), official.synsets(caption)
        assert set(theirs) <= set(ours), caption
        extra.update(default.name_of(k) for k in ours if k not in theirs)
        dropped.update(old.name_of(k) for k in set(old.synsets(caption)) - set(ours))
    assert extra == {
        "man.n.01": 436,
        "graffito.n.01": 59,
        "tooth.n.01": 57,
        "vase.n.01": 28,
        "cookie.n.01": 9,
        "use.n.01": 8,
        "pantie.n.01": 1,
    }
    # What no longer comes from taking the token unchanged: the labels that change on COCO val.
    assert dropped == {
        "stairs.n.01": 18,
        "ways.n.01": 8,
        "elements.n.01": 2,
        "cleaners.n.01": 2,
        "masters.n.01": 1,
        "taxis.n.01": 1,
        "species.n.01": 1,
        "teens.n.01": 1,
    }


def test_official_switch_reproduces_corenet(coco_captions):
    official = CaptionLabeler(official=True)
    captions = coco_captions[::25] + ["A%20cat+on <b>the</b> mat. Two men.", "it is very nice", "", "3 dogs"]
    for caption in captions:
        assert official.synsets(caption) == _corenet_labels(caption), caption


@pytest.mark.slow
def test_official_switch_reproduces_corenet_on_every_coco_caption(coco_captions):
    """`--official` (labeler corenet) is corenet's rules on all 25,414 COCO captions here, whatever
    this engine's own labelers do."""
    official, words = make_labeler("corenet"), {}
    for caption in coco_captions:
        assert official.synsets(caption) == _corenet_labels(caption, tag=False, words=words), caption


BAD_CAPTIONS = [
    "",
    "   \t\n ",
    "<div><br/><img src='x.jpg'></div>",
    "&lt;b&gt;&amp;&nbsp;",
    "Le chien joue dans le jardin",
    "Der Hund spielt im Garten",
    "我的狗在公园里",
    "running quickly",
    "U.S.A. ... !!! ??? ,,,",
    "x" * 20_000,
    "\x00\x01\x02",
    None,
    123,
    b"\xff\xfe\xfa",
]


@pytest.mark.parametrize("mode", [{}, {"pos_filter": False}, {"official": True}])
@pytest.mark.parametrize("caption", BAD_CAPTIONS, ids=lambda c: repr(c)[:20])
def test_bad_captions_give_no_labels(caption, mode):
    labeler = CaptionLabeler(**mode)
    result = labeler.synsets(caption)
    if mode.get("official") and caption is None:  # corenet labels str(None) == "none"
        assert result == [wnid(wn.synset("none.n.01").offset())]
    else:
        assert result == []


def test_html_does_not_hide_nouns(labeler):
    assert names(labeler, "<p>A <b>dog</b> &amp; a cat</p>") == ["dog.n.01", "cat.n.01"]


# ------------------------------------------------------------------------------------- vocabulary
def test_vocabulary_counts_once_per_caption_and_prunes():
    captions = ["dog dog dog", "a dog and a cat", "a cat", "a bird", "the dog"]
    one = "catlip-1+no-pos-filter"
    vocab, stats = build_vocabulary(captions, min_count=2, labeler=one, progress=False)
    assert vocab.synsets == ["dog.n.01", "cat.n.01"]
    assert vocab.counts == [3, 2]
    assert stats.captions == 5 and stats.no_synset == 0 and stats.no_label == 1  # "a bird"
    top1, _ = build_vocabulary(captions, min_count=1, top_k=1, labeler=one, progress=False)
    assert top1.synsets == ["dog.n.01"]
    with pytest.raises(ValueError, match="min_count"):
        build_vocabulary(captions, min_count=0)


def test_vocabulary_ties_are_broken_by_wnid():
    vocab, _ = build_vocabulary(["cat", "dog"], labeler="catlip-1+no-pos-filter", progress=False)
    assert vocab.wnids == sorted(vocab.wnids)


@pytest.mark.parametrize(("labeler", "counts"), [("catlip-2", (3000, 0, 0)), ("catlip-1", (3000, 15, 9))])
def test_parallel_build_equals_serial(coco_captions, tmp_path, labeler, counts):
    from catlip.vocab import write_vocabulary
    from engine.executor import LocalExecutor

    sample = coco_captions[:3000]
    serial, s1 = build_vocabulary(sample, min_count=2, labeler=labeler, progress=False)
    with LocalExecutor(2) as executor:
        parallel, s2 = build_vocabulary(
            sample, min_count=2, labeler=labeler, executor=executor, progress=False
        )
    assert serial == parallel
    assert (s1.captions, s1.no_label, s1.no_synset) == (s2.captions, s2.no_label, s2.no_synset) == counts
    write_vocabulary(tmp_path / "1.tsv", serial, s1)
    write_vocabulary(tmp_path / "2.tsv", parallel, s2)
    for name in ("1.tsv",) + (("1.tsv.senses.json",) if labeler == "catlip-2" else ()):
        assert (tmp_path / name).read_bytes() == (tmp_path / name.replace("1", "2", 1)).read_bytes(), name
    metas = [json.loads((tmp_path / f"{i}.tsv.json").read_text()) for i in (1, 2)]
    assert metas[0]["labeler"] == metas[1]["labeler"] == s1.labeler.record()


def test_vocabulary_roundtrip_and_encoding(tmp_path):
    vocab = Vocabulary(["n02084071", "n02121620"], ["dog.n.01", "cat.n.01"], [10, 5])
    path = tmp_path / "vocab.tsv"
    vocab.save(path)
    lines = path.read_text().splitlines()
    assert lines[0] == "index\twnid\tsynset\tlemma\tcount"
    assert lines[1] == "0\tn02084071\tdog.n.01\tdog\t10"
    loaded = Vocabulary.load(path)
    assert loaded == vocab and loaded.lemmas == ["dog", "cat"]
    with pytest.raises(VocabularyError, match="no vocab.tsv.json beside it, so the labeler .* is unknown"):
        LabelEncoder(path)
    encode = LabelEncoder(path, labeler="catlip-1")
    assert encode("A cat chases a dog and another cat.") == [0, 1]
    assert encode("a cat") == [1]
    assert encode("a bird") == []
    assert encode.encode_batch(["dog", ""]) == [[0], []]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", r"vocab.tsv:1: not a catlip vocabulary"),
        ("wnid\tcount\nn1\t2\n", r"vocab.tsv:1: not a catlip vocabulary"),
        ("index\twnid\tsynset\tlemma\tcount\n0\tn02084071\tdog.n.01\tdog\n", r"vocab.tsv:2: "),
        ("index\twnid\tsynset\tlemma\tcount\n0\tdog\tdog.n.01\tdog\t3\n", r"vocab.tsv:2: bad wnid"),
        (
            "index\twnid\tsynset\tlemma\tcount\n1\tn02084071\tdog.n.01\tdog\t3\n",
            r"vocab.tsv:2: index 1 out of order",
        ),
        (
            "index\twnid\tsynset\tlemma\tcount\n0\tn02084071\tdog.n.01\tdog\tmany\n",
            r"vocab.tsv:2: invalid literal",
        ),
        (
            "index\twnid\tsynset\tlemma\tcount\n0\tn02084071\tdog.n.01\tdog\t3\n1\tn02084071\tdog.n.01\tdog\t3\n",
            "duplicate wnid",
        ),
    ],
)
def test_malformed_vocabulary_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "vocab.tsv"
    path.write_text(content)
    with pytest.raises(VocabularyError, match=message):
        Vocabulary.load(path)


def test_missing_vocabulary_file(tmp_path):
    with pytest.raises(VocabularyError, match="cannot read"):
        Vocabulary.load(tmp_path / "absent.tsv")


@pytest.mark.slow
def test_coco_val2017_vocabulary(shared_data):
    """Acceptance: the COCO val2017 captions with --min-count 5."""
    from catlip.captions import iter_captions

    captions = [c for _, c in iter_captions(shared_data / "coco_captions_val2017.json")]
    vocab, stats = build_vocabulary(captions, min_count=5, progress=False)
    assert stats.captions == 25_014
    # catlip-2: a bare "table" in COCO is the one laid for a meal (its compounds: dining, dinner table)
    for name in ("man.n.01", "person.n.01", "dog.n.01", "cat.n.01", "table.n.03", "pizza.n.01", "train.n.01"):
        assert name in vocab.synsets, name
    assert 1 - stats.no_label / stats.captions >= 0.95
    assert min(vocab.counts) >= 5 and vocab.counts == sorted(vocab.counts, reverse=True)
