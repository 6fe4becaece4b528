"""Cleaning, and the fast tokenizer and tagger against NLTK's own on real and tricky text."""

from __future__ import annotations

import nltk
import pytest

from catlip.text import clean_caption, clean_caption_official, get_tagger, word_tokenize

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
]


@pytest.mark.parametrize("text", TRICKY)
def test_tokenizer_matches_nltk_on_tricky_text(text):
    assert word_tokenize(text) == nltk.word_tokenize(text, preserve_line=True)


def test_tokenizer_and_tagger_match_nltk_on_all_coco_captions(coco_captions, nltk_ready):
    tagger = get_tagger()
    texts = [clean_caption(c) for c in coco_captions]
    fast_path = 0
    for text in texts:
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
    ],
)
def test_clean_caption(raw, clean):
    assert clean_caption(raw) == clean


def test_official_cleaning_follows_corenet():
    # corenet: URL-unquote, '+' -> ' ', strip tags, ftfy, lower
    assert clean_caption_official("A%20dog+on+a <i>mat</i>") == "a dog on a mat"
    assert clean_caption_official("cafÃ© Dog") == "café dog"  # ftfy repairs mojibake
    assert clean_caption_official(None) == "none"  # corenet calls str() on whatever it gets
