"""perf/bench_label_quality.py's scoring, on hand-made images whose every number is worked out."""

from __future__ import annotations

import pytest

from perf.bench_label_quality import CATEGORY_SENSES, Ceiling, Image, Taxonomy, score

pytestmark = pytest.mark.usefixtures("nltk_ready")


@pytest.fixture(scope="module")
def tax() -> Taxonomy:
    return Taxonomy()


def key(tax: Taxonomy, name: str) -> str:
    return f"n{tax.wn.synset(name).offset():08d}"


def test_scores_worked_out_by_hand(tax: Taxonomy) -> None:
    images = [
        Image(1, frozenset({"dog", "hot dog"}), ()),
        Image(2, frozenset({"hot dog"}), ()),
        Image(3, frozenset({"dining table"}), ()),
        Image(4, frozenset({"person"}), ()),
    ]
    labels = [
        {key(tax, "dog.n.01"), key(tax, "frank.n.02")},  # both found; the dog is in the picture
        {key(tax, "dog.n.01")},  # the wrong sense of "hot dog"'s head, and a dog that is not there
        {key(tax, "table.n.03")},  # dining_table.n.01's direct hypernym: an ancestor, not wrong
        {key(tax, "man.n.01"), key(tax, "night.n.01")},  # a hyponym of person; night is no thing
    ]
    m = score(images, labels, tax)
    assert m["pairs"] == 5 and m["recall"] == 3 / 5 and m["recall_hypernym"] == 4 / 5
    assert m["multiword_pairs"] == 3 and m["multiword_wrong"] == 1 / 3
    assert m["false_object"] == 1 / 4  # of dog, frank, dog, man: the second dog
    assert m["non_physical"] == 1 / 6 and m["labels_per_image"] == 6 / 4
    assert m["per_category"]["hot dog"] == [1, 2] and m["per_category"]["dining table"] == [0, 1]


def test_every_category_sense_exists_and_the_ceiling_reads_names_synonyms_and_hyponyms(tax: Taxonomy) -> None:
    assert len(CATEGORY_SENSES) == 80 and all(tax.senses[c] for c in CATEGORY_SENSES)
    ceiling = Ceiling(tax)
    tokens = "a man eating two hot dogs on a sofa".split()
    # a name, a synonym; and, read word by word with no context, the dog in "hot dogs" (a ceiling)
    assert ceiling.categories(tokens, ceiling.said) == {"hot dog", "couch", "dog"}
    assert {"person", "hot dog", "couch"} <= ceiling.categories(tokens, ceiling.hypo)  # man: a hyponym
    assert "wine glass" in ceiling.categories("two wine glasses".split(), ceiling.said)  # wineglass
