"""Cleaning, and the fast sentence splitter, tokenizer and tagger against NLTK's own on real,
tricky and random text."""

from __future__ import annotations

import random

import ftfy
import nltk
import pytest

from catlip.text import (
    _SIMPLE_RE,
    clean_caption,
    clean_caption_official,
    fix_text,
    get_tagger,
    split_sentences,
    word_tokenize,
)

TRICKY = [
    "a dog.",
    "a dog",
    "a dog..",
    "a dog...",
    "two dogs, three cats, a bird.",
    "1,000 dogs, 2 cats",
    "a,b c, d ,e",
    "dogs,1 and cats, 2",
    "i cannot see the gonna wanna gotta lemme gimme",
    "a man's hat isn't red",
    'he said "hello" to the dog',
    "a dog (brown) and a cat [white]",
    "cats; dogs: birds? yes! #tag @user $5 50% a&b",
    "a dog. a cat. a bird.",
    "u.s. army jeep",
    "the year 1999 and 42 cats and 3-d glasses",
    "  leading and trailing spaces  ",
    ".",
    ",",
    "'tis the season",
    "",
    "naïve café",
    "a dog,,cat",
    "a dog,,,cat, ,,",
    "a,,.",
    "dogs,1,2 and 1,000 cats,",
]


@pytest.mark.parametrize("text", TRICKY)
def test_tokenizer_matches_nltk_on_tricky_text(text):
    assert word_tokenize(text) == nltk.word_tokenize(text, preserve_line=True)


# Characters the fast paths treat specially (commas, periods, the sentence ends), next to what
# sends text to NLTK (quotes, other punctuation, digits, unicode quotes and letters, abbreviations).
FUZZ_PIECES = list("ab cd e,,,. ..'\"019?!:;-()é“”’ａ\t") + [" ", " ", *"dog cat mr. st. u.s. ,".split()]


FAST_PIECES = list("ab cd e,,,019 ") + ["dog", "cat", "cannot", " "]  # the fast tokenizer's alphabet


def fuzz_texts(n: int, seed: int = 0) -> list[str]:
    """Random strings; every other one from the fast path's alphabet, half of those with a period."""
    rng = random.Random(seed)
    texts = []
    for i in range(n):
        pieces = FUZZ_PIECES if i % 2 else FAST_PIECES
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 14)))
        texts.append(text + "." if i % 4 == 2 else text)
    return texts


def test_tokenizer_matches_nltk_on_random_text():
    texts = fuzz_texts(10_000)
    fast = [t for t in texts if _SIMPLE_RE.fullmatch(t)]
    assert len(fast) > 4_000 and sum(",," in t for t in fast) > 500  # the fast path is exercised
    for text in texts:
        assert word_tokenize(text) == nltk.word_tokenize(text, preserve_line=True), text


def test_sentence_splitter_matches_nltk_on_random_text(nltk_ready):
    texts = fuzz_texts(10_000, seed=1)
    texts += [" ".join(t.split()) for t in texts[:5_000]]  # as cleaned captions are
    punkt = nltk.tokenize.punkt.PunktTokenizer("english")
    for text in texts:
        assert split_sentences(text) == punkt.tokenize(text), text


@pytest.mark.parametrize(
    ("text", "sentences"),
    [
        ("a view of a motorcycle. the picture is very close.", 2),
        ("mr. smith and his dog.", 1),  # an abbreviation from punkt_tab, not a sentence end
        ("a dog on a beach", 1),
        ("what is this? a dog!", 2),
        ("", 0),
    ],
)
def test_sentence_splits(text, sentences, nltk_ready):
    assert len(split_sentences(text)) == sentences == len(nltk.sent_tokenize(text))


def test_ftfy_shortcut_is_ftfy_on_random_ascii():
    rng = random.Random(2)
    texts = ["".join(chr(rng.randint(0, 127)) for _ in range(rng.randint(0, 12))) for _ in range(20_000)]
    texts += ["a\x1b[31mred\x1b[0m dog", "tab\tnew\nline\r\n", "nul\x00 and del\x7f"]
    for text in texts:
        assert fix_text(text) == ftfy.fix_text(text, unescape_html=False), repr(text)


def test_tokenizer_splitter_and_tagger_match_nltk_on_all_coco_captions(coco_captions, nltk_ready):
    tagger = get_tagger()
    texts = [clean_caption(c) for c in coco_captions]
    fast_path = 0
    for text in texts:
        assert split_sentences(text) == nltk.sent_tokenize(text), text
        tokens = nltk.word_tokenize(text, preserve_line=True)
        assert word_tokenize(text) == tokens, text
        assert tagger.tag(tokens) == [t for _, t in nltk.pos_tag(tokens)], text
        fast_path += bool(text) and "'" not in text and '"' not in text
    assert len(texts) == 25_414 and fast_path > 20_000


@pytest.mark.parametrize("text", TRICKY + ["The Quick Brown Fox", "A-B testing in 2024", "x"])
def test_tagger_matches_nltk_including_case_and_digits(text, nltk_ready):
    tokens = nltk.word_tokenize(text, preserve_line=True)
    assert get_tagger().tag(tokens) == [t for _, t in nltk.pos_tag(tokens)]


def test_tagger_tie_break_and_unscored_classes(nltk_ready):
    tagger = get_tagger()
    assert tagger._best({"NN": -1.0, "VB": -2.0}) == max(tagger.classes)  # unscored classes score 0
    assert tagger._best({"NN": 1.0, "VB": 1.0}) == "VB"  # NLTK breaks ties by the larger label
    assert tagger._best({c: 0.0 for c in tagger.classes}) == max(tagger.classes)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("A <b>Dog</b> &amp; a&nbsp;Cat\n", "a dog & a cat"),
        ("&lt;p&gt;html&lt;/p&gt; escaped twice", "html escaped twice"),
        ("   ", ""),
        ("", ""),
        (None, ""),
        (3.5, ""),
        (b"bytes \xff caption", "bytes \ufffd caption"),
        ("Tabs\tand\r\nnewlines", "tabs and newlines"),
        # web alt-text: URL-encoded, full-width, mis-decoded (as the official cleaning fixes it)
        ("a+dog+on+a+beach", "a dog on a beach"),
        ("A%20dog%20on%20a%20%3Cb%3Ebeach%3C%2Fb%3E", "a dog on a beach"),
        ("ａ ｄｏｇ", "a dog"),
        ("cafÃ© Dog", "café dog"),
        ("“curly” ﬁsh", '"curly" fish'),
        ("100% cotton", "100% cotton"),
    ],
)
def test_clean_caption(raw, clean):
    assert clean_caption(raw) == clean


def test_official_cleaning_follows_corenet():
    # corenet: URL-unquote, '+' -> ' ', strip tags, ftfy, lower
    assert clean_caption_official("A%20dog+on+a <i>mat</i>") == "a dog on a mat"
    assert clean_caption_official("cafÃ© Dog") == "café dog"  # ftfy repairs mojibake
    assert clean_caption_official(None) == "none"  # corenet calls str() on whatever it gets
