"""The catlip-2 labeler (catlip.senses): compounds, concrete senses, synonyms, rescue, members,
the corpus table, its view of WordNet, and the labeler records that keep labels from mixing."""

from __future__ import annotations

import json

import pytest

from catlip.labels import LabelerMismatch, LabelerSpec, make_labeler
from catlip.senses import FitCounts, SenseLabeler, SenseTable, _sign_test

pytestmark = pytest.mark.usefixtures("nltk_ready")


@pytest.fixture(scope="module")
def labeler() -> SenseLabeler:
    return SenseLabeler()


def names(labeler, caption: str) -> list[str]:
    return [labeler.name_of(k) for k in labeler.synsets(caption)]


@pytest.mark.parametrize(
    ("caption", "whole", "parts"),
    [
        ("A hot dog with mustard on a bun.", "frank.n.02", "dog.n.01"),
        ("a man holding a tennis racket", "tennis_racket.n.01", "tennis.n.01"),
        (
            "a red fire hydrant on a sidewalk",
            "fireplug.n.01",
            "fire.n.04",
        ),  # not red_fire, a right-to-left read
        ("two wine glasses on a table", "wineglass.n.01", "wine.n.01"),  # written as one word, plural
        ("a teddy bear on a bed", "teddy.n.01", "bear.n.01"),
        ("a woman on her cell phone", "cellular_telephone.n.01", "telephone.n.01"),
    ],
)
def test_compounds_beat_their_parts(labeler, caption, whole, parts):
    got = names(labeler, caption)
    assert whole in got and parts not in got, got
    assert parts in names(SenseLabeler(compounds=False), caption)  # the switch is what does it


def test_a_compound_that_only_names_an_individual_is_not_one(labeler):
    # white_house.n.01 is a kind of house, white_house.n.02 the President's: a caption's is a house
    assert "white_house.n.01" in names(labeler, "a white house with a red roof")
    # every sense of "red_sea" is the sea itself: not a compound of a caption
    assert names(labeler, "a red sea of umbrellas")[-1] == "umbrella.n.01"
    assert not any(n.startswith("red_sea") for n in names(labeler, "a red sea of umbrellas"))


@pytest.mark.parametrize(
    ("caption", "concrete", "first"),
    [
        ("a kite in the sky", "kite.n.03", "kite.n.01"),  # the plaything, not a bank check
        ("a tv on the wall", "television_receiver.n.01", "television.n.01"),  # not the broadcasting
        ("a pile of books", "book.n.02", "book.n.01"),  # the bound pages, not the written work
        ("a cat on a table", "table.n.02", "table.n.01"),  # furniture, not a table of data
        ("a bathroom with a toilet", "toilet.n.02", "toilet.n.01"),  # the fixture, part of the room
    ],
)
def test_a_concrete_sense_beats_an_abstract_first_sense(labeler, caption, concrete, first):
    got = names(labeler, caption)
    assert concrete in got and first not in got, got


def test_words_with_no_concrete_sense_keep_their_label(labeler):
    got = names(labeler, "a game of tennis at night")
    assert {"tennis.n.01", "night.n.01"} <= set(got)
    assert "game.n.04" not in got  # the hunted animal: a game of tennis keeps its abstract sense


def test_a_synonym_keeps_its_synset(labeler):
    assert names(labeler, "a boy on a couch with a remote") == [
        "male_child.n.01",
        "sofa.n.01",
        "remote_control.n.01",
    ]
    assert names(labeler, "three donuts and a tie") == ["doughnut.n.02", "necktie.n.01"]
    # catlip-1 drops them: their first synset is named after another lemma
    one = make_labeler("catlip-1")
    assert [one.name_of(k) for k in one.synsets("a boy on a couch with a remote")] == []


def test_of_several_base_forms_the_one_with_its_own_sense(labeler):
    # "vases": vas (whose only sense is vessel.n.01, a blood vessel) and vase
    assert names(labeler, "two vases of flowers") == ["vase.n.01", "flower.n.01"]


def test_nouns_the_tagger_calls_adjectives_are_rescued(labeler):
    caption = "a baby elephant having fun"
    assert labeler._tagger.tag(["a", "baby", "elephant", "having", "fun"])[2] == "JJ"
    assert "elephant.n.01" in names(labeler, caption)
    assert "elephant.n.01" not in names(SenseLabeler(rescue=False), caption)
    # a real adjective is not: WordNet has "white" as an adjective
    assert names(labeler, "a white cat") == ["cat.n.01"]


def test_a_group_labels_its_only_kind_of_member(labeler):
    assert names(labeler, "a group of people") == ["group.n.01", "people.n.01", "person.n.01"]
    assert "person.n.01" not in names(SenseLabeler(members=False), "a group of people")


def test_named_individuals_are_candidates_only_when_nothing_else_is(labeler):
    assert [s.name for s, _ in labeler.candidates(("brown",))] == ["brown.n.01"]  # not John Brown
    assert [s.name for s, _ in labeler.candidates(("london",))] == [
        "london.n.01",
        "london.n.02",
    ]  # all it has


@pytest.mark.parametrize(
    ("caption", "with_context", "alone"),
    [
        ("A kitchen with a refrigerator, a microwave and a toaster.", "toaster.n.02", "toaster.n.01"),
        ("An office desk with two flat panel monitors.", "monitor.n.04", "proctor.n.01"),
    ],
)
def test_the_other_nouns_choose_among_concrete_senses(labeler, caption, with_context, alone):
    assert with_context in names(labeler, caption)  # the appliance, the display
    assert alone in names(SenseLabeler(context=False), caption)  # a person who proposes a toast, a proctor


# ---------------------------------------------------------------------------------- the corpus
def test_the_corpus_sense_of_a_head_noun(labeler):
    """Compounds the corpus uses decide what its bare noun means, when they could hardly be chance."""
    corpus = ["a dining table with food"] * 8 + ["a coffee table"] + ["a table by the window"] * 3
    table = labeler.fit_counts(corpus).table()
    assert table.entries["table"]["table.n.03"] >= 3  # dining_table is a kind of table.n.03
    fitted = make_labeler("catlip-2", table)
    assert names(fitted, "a table by the window") == ["table.n.03", "window.n.01"]
    assert names(labeler, "a table by the window") == ["table.n.02", "window.n.01"]
    # four compound mentions, all one way, are not enough (p = 1/16); 8 of 9 are (p = 0.02)
    few = labeler.fit_counts(["a dining table"] * 4 + ["a table"] * 20).table()
    assert few.entries.get("table", {}).get("table.n.03", 0) < 3


def test_sign_test():
    assert _sign_test(3, 3) == 0.125 and _sign_test(5, 5) == 1 / 32
    assert _sign_test(0, 4) == 1.0
    assert _sign_test(40, 62) < 0.05 < _sign_test(23, 37)


def test_fit_counts_merge_in_any_grouping(coco_captions, labeler, tmp_path):
    captions = coco_captions[:600]
    whole = labeler.fit_counts(captions).table()
    merged = FitCounts()
    for part in (captions[400:], captions[:150], captions[150:400]):
        merged.merge(labeler.fit_counts(part))
    assert merged.table().entries == whole.entries and merged.table().sha256 == whole.sha256
    path = tmp_path / "senses.json"
    whole.save(path)
    assert SenseTable.load(path).sha256 == whole.sha256


def test_a_sense_table_that_is_not_one_is_refused(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a catlip sense table"):
        SenseTable.load(path)
    path.write_text(json.dumps({"format": "catlip-senses/1", "entries": {"table": {"table.n.03": "x"}}}))
    with pytest.raises(ValueError, match="malformed sense table"):
        SenseTable.load(path)


# -------------------------------------------------------------------------- the view of WordNet
def test_wordnet_nouns_match_nltk(coco_captions, labeler):
    """Every synset the labeler meets on 2,000 COCO captions reads as NLTK reads it."""
    from nltk.corpus import wordnet as wn

    nouns = labeler._nouns
    seen = set()
    for caption in coco_captions[:2000]:
        for unit in labeler.units(caption):
            seen.update(s.offset for s, _ in labeler.candidates(unit.key))
    assert len(seen) > 1000
    for offset in sorted(seen):
        ours, theirs = nouns.synset(offset), wn.synset_from_pos_and_offset("n", offset)
        assert nouns.name(offset) == theirs.name()
        assert ours.lexname == theirs.lexname() and list(ours.lemmas) == theirs.lemma_names()
        assert ours.definition == theirs.definition() and list(ours.examples) == theirs.examples()
        for symbol, related in (("@", theirs.hypernyms()), ("~", theirs.hyponyms()), ("#p", theirs.part_holonyms()),
                                ("%m", theirs.member_meronyms()), ("@i", theirs.instance_hypernyms())):  # fmt: skip
            assert sorted(ours.related(symbol)) == sorted(s.offset() for s in related), (theirs, symbol)
        for lemma in theirs.lemmas():
            assert nouns.count(lemma.name().lower(), offset) == lemma.count(), lemma
        lemma = theirs.lemma_names()[0]
        assert nouns.senses(lemma.lower()) == list(
            dict.fromkeys(m.synset().offset() for m in wn.lemmas(lemma, "n"))
        )


# ------------------------------------------------------------------------------ labeler records
def test_labeler_records():
    spec = LabelerSpec("catlip-2", True, "ab" * 32)
    assert spec.id == "catlip-2" and LabelerSpec.from_record(spec.record()) == spec
    assert LabelerSpec.parse("catlip-1+no-pos-filter") == LabelerSpec("catlip-1", False)
    assert LabelerSpec("corenet").pos_filter is False and LabelerSpec("corenet").id == "corenet"
    # dataset.json / vocab.tsv.json written before labelers had names
    assert LabelerSpec.of_meta({"pos_filter": True, "official": False}) == LabelerSpec("catlip-1")
    assert LabelerSpec.of_meta({"pos_filter": False, "official": True}) == LabelerSpec("corenet")
    with pytest.raises(ValueError, match="unknown labeler 'catlip-9'"):
        LabelerSpec("catlip-9")
    with pytest.raises(ValueError, match="unknown labeler"):
        LabelerSpec.parse("catlip-2+fast")
    with pytest.raises(
        LabelerMismatch, match=r"A was labelled by catlip-2 \(sense table ababababab.*B by catlip-1"
    ):
        spec.check_same(LabelerSpec("catlip-1"), "A", "B")
    spec.check_same(LabelerSpec("catlip-2", True, "ab" * 32), "A", "B")
