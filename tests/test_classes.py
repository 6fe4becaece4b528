"""catlip classes: class names and wnids to WordNet synsets and vocabulary rows.

``data/coco_val2017_vocab.tsv`` is the main job's vocabulary as the catlip-1 labeler wrote it, by
``catlip vocab --captions ../shared/data/coco_captions_val2017.json --min-count 5`` (985 synsets;
building it takes over a minute on two busy cores, so it is kept here).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from catlip.classes import (
    MAX_DISTANCE,
    ClassMap,
    ClassMapError,
    ClassMapper,
    build_class_map,
    read_names,
    vocab_sha256,
)
from catlip.labels import Vocabulary, wnid

COCO_VOCAB = Path(__file__).parent / "data" / "coco_val2017_vocab.tsv"


def synset_vocab(tmp: Path, names: list[str]) -> Path:
    """A vocabulary TSV holding these synsets (by name), counts descending."""
    from nltk.corpus import wordnet as wn

    wnids = [wnid(wn.synset(n).offset()) for n in names]
    path = tmp / "vocab.tsv"
    Vocabulary(wnids, names, list(range(len(names) * 10, 0, -10))).save(path)
    return path


@pytest.fixture(scope="module")
def coco_map(shared_data: Path, nltk_ready: None) -> ClassMap:
    return build_class_map(COCO_VOCAB, names=shared_data / "coco128" / "names.yaml")


def test_coco_names_map_with_no_overrides(coco_map: ClassMap, shared_data: Path) -> None:
    """All 80 COCO names map onto the COCO-caption vocabulary, each to a sensible row."""
    vocab = Vocabulary.load(COCO_VOCAB)
    assert len(coco_map.classes) == 80 and coco_map.unmapped == []
    assert coco_map.names == read_names(shared_data / "coco128" / "names.yaml")
    by_name = {c.name: c for c in coco_map.classes}
    rows = {name: [vocab.synsets[r] for r in c.rows] for name, c in by_name.items()}
    for c in coco_map.classes:
        assert c.rows and c.row_wnids == [vocab.wnids[r] for r in c.rows]
        assert 0 <= c.distance <= MAX_DISTANCE
    # the class's own synset where it is a row, for the plain names
    for name in ("person", "dog", "cat", "bicycle", "pizza", "toothbrush", "teddy bear", "couch", "tv"):
        assert by_name[name].distance == 0 and by_name[name].row_wnids == [by_name[name].wnid], name
    assert by_name["person"].synset == "person.n.01" and rows["person"] == ["person.n.01"]
    assert by_name["couch"].synset == "sofa.n.01" and by_name["tv"].synset == "television.n.01"
    # names that are no WordNet lemma as written
    assert by_name["wine glass"].synset == "wineglass.n.01" and rows["wine glass"] == ["glass.n.01"]
    assert by_name["cell phone"].synset == "cellular_telephone.n.01" and rows["cell phone"] == [
        "telephone.n.01"
    ]
    assert by_name["sports ball"].synset == "ball.n.01" and by_name["sports ball"].how.startswith("head noun")
    assert by_name["stop sign"].synset == "sign.n.01"
    assert by_name["potted plant"].synset == "plant.n.02"  # the organism, chosen by pot_plant
    assert rows["potted plant"] == ["plant.n.01"]  # the row captions' "plant" trained
    # hot dog: the food, and the row captions' "hotdog" trained
    assert by_name["hot dog"].synset == "hotdog.n.02" and rows["hot dog"] == ["hotdog.n.01"]
    assert by_name["dining table"].synset == "dining_table.n.01" and rows["dining table"] == ["table.n.01"]
    assert by_name["dining table"].distance == 1
    assert rows["tennis racket"] == ["racket.n.01"] and rows["baseball bat"] == ["bat.n.01"]
    assert rows["traffic light"] == ["light.n.01"] and rows["hair drier"] == ["dryer.n.01"]
    assert rows["handbag"] == ["bag.n.01"] and rows["remote"] == ["device.n.01"]
    assert "suit.n.01" in rows["tie"] and "shirt.n.01" in rows["tie"]


def test_coco_json_and_cli(tmp_path: Path, shared_data: Path, nltk_ready: None, capsys) -> None:
    """The CLI prints the table and writes catlip-classes/1 JSON that catlip pack's reader accepts."""
    from engine.cli import main
    from engine.packing import ClassSet

    out = tmp_path / "classes.json"
    assert main(["classes", "--vocab", str(COCO_VOCAB), "--names", str(shared_data / "coco128/names.yaml"), "--out", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "hot dog" in printed and "hotdog.n.02" in printed and "80 classes" in printed
    raw = json.loads(out.read_text())
    assert raw["format"] == "catlip-classes/1" and raw["unmapped"] == []
    assert raw["vocab"] == {"path": str(COCO_VOCAB), "size": 985, "sha256": vocab_sha256(COCO_VOCAB)}
    assert raw["source"]["kind"] == "names"
    first = raw["classes"][0]
    assert set(first) == {"index", "name", "wnid", "synset", "rows", "row_wnids", "distance", "how"}
    assert first["name"] == "person" and first["wnid"] == "n00007846"
    assert ClassSet.load(out).names == tuple(c["name"] for c in raw["classes"])
    assert tuple(ClassMap.load(out).names) == ClassSet.load(out).names


def test_nearest_rows_with_distance(tmp_path: Path, nltk_ready: None) -> None:
    """Not in the vocabulary: all rows at the shortest hypernym/hyponym distance, the distance said."""
    vocab = synset_vocab(tmp_path, ["canine.n.02", "feline.n.01", "big_cat.n.01", "furniture.n.01"])
    names = tmp_path / "names.txt"
    names.write_text("puppy\ncat\n# a comment\n\nchair\n")
    m = build_class_map(vocab, names=names)
    puppy, cat, chair = m.classes
    # puppy.n.01 -> dog.n.01 -> canine.n.02
    assert (puppy.synset, puppy.rows, puppy.distance) == ("puppy.n.01", [0], 2)
    assert "nearest canine.n.02 (2 links)" in puppy.how
    # cat.n.01's parent feline.n.01 (1 link) is a row; big_cat.n.01 is 2 links away: not taken
    assert (cat.rows, cat.distance) == ([1], 1)
    # chair.n.01 -> seat.n.03 -> furniture.n.01
    assert (chair.synset, chair.rows, chair.distance) == ("chair.n.01", [3], 2)


def test_ties_give_every_row(tmp_path: Path, nltk_ready: None) -> None:
    """Two synsets at the same shortest distance: both rows (the score takes their max)."""
    vocab = synset_vocab(tmp_path, ["puppy.n.01", "hunting_dog.n.01", "cat.n.01"])
    names = tmp_path / "n.txt"
    names.write_text("dog\n")
    (dog,) = build_class_map(vocab, names=names).classes
    assert dog.synset == "dog.n.01" and dog.rows == [0, 1] and dog.distance == 1


def test_word_row_and_known_sense(tmp_path: Path, nltk_ready: None) -> None:
    """A synset not in the vocabulary takes the row its word got in captions (hot dog's food sense
    -> the row of "hotdog", hotdog.n.01), not its hypernym's."""
    vocab = synset_vocab(tmp_path, ["hotdog.n.01", "sandwich.n.01", "table.n.01", "furniture.n.01"])
    names = tmp_path / "n.txt"
    names.write_text("hot dog\ndining table\n")
    hot, table = build_class_map(vocab, names=names).classes
    assert (hot.synset, hot.rows, hot.distance) == ("hotdog.n.02", [0], 0)
    assert hot.how.startswith("known sense")
    assert (table.synset, table.rows, table.distance) == ("dining_table.n.01", [2], 1)
    assert "by its word 'table'" in table.how


def test_overrides_win(tmp_path: Path, nltk_ready: None) -> None:
    vocab = synset_vocab(tmp_path, ["dog.n.01", "cat.n.01", "wolf.n.01"])
    names = tmp_path / "n.txt"
    names.write_text("dog\ncat\n")
    overrides = tmp_path / "o.tsv"
    overrides.write_text("# name<TAB>wnid\nDog\tn02114100\ncat\tdog.n.01\n")  # wolf.n.01; by synset name
    dog, cat = build_class_map(vocab, names=names, overrides=overrides).classes
    assert (dog.synset, dog.rows, dog.how) == ("wolf.n.01", [2], "override")
    assert (cat.synset, cat.rows, cat.how) == ("dog.n.01", [0], "override")
    overrides.write_text("dog\tn99999999\n")
    with pytest.raises(ClassMapError, match=r"o.tsv:1: 'n99999999' is no WordNet 3.0 noun synset"):
        build_class_map(vocab, names=names, overrides=overrides)
    overrides.write_text("dog n02114100\n")
    with pytest.raises(ClassMapError, match=r"o.tsv:1: expected name<TAB>wnid"):
        build_class_map(vocab, names=names, overrides=overrides)


def test_wnids_file(tmp_path: Path, nltk_ready: None) -> None:
    vocab = synset_vocab(tmp_path, ["dog.n.01", "domestic_cat.n.01", "feline.n.01"])
    wnids = tmp_path / "wnids.txt"
    wnids.write_text("n02084071\nn02121808 domestic cat\nn02123045\n")  # dog, domestic cat, tabby
    m = build_class_map(vocab, wnids=wnids)
    assert m.source["kind"] == "wnids"
    assert [(c.name, c.synset, c.rows, c.distance, c.how) for c in m.classes] == [
        ("dog", "dog.n.01", [0], 0, "wnid"),
        ("domestic cat", "domestic_cat.n.01", [1], 0, "wnid"),
        ("tabby", "tabby.n.01", [1], 1, "wnid; nearest domestic_cat.n.01 (1 link)"),
    ]
    wnids.write_text("n02084071\ndog.n.01\n")
    with pytest.raises(ClassMapError, match=r"wnids.txt:2: 'dog.n.01' is not a wnid"):
        build_class_map(vocab, wnids=wnids)


def test_unmapped_is_an_error_naming_it(tmp_path: Path, nltk_ready: None, capsys) -> None:
    from engine.cli import main

    vocab = synset_vocab(tmp_path, ["dog.n.01", "cat.n.01"])
    names = tmp_path / "n.txt"
    names.write_text("dog\nqwxzzy blorp\ncat\nmeteorology\n")  # no lemma at all; a lemma far from any row
    with pytest.raises(
        ClassMapError, match=r"2 class\(es\) .*'qwxzzy blorp', 'meteorology'.*--allow-unmapped"
    ):
        build_class_map(vocab, names=names)
    out = tmp_path / "c.json"
    assert main(["classes", "--vocab", str(vocab), "--names", str(names), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "catlip classes: error:" in err and "'qwxzzy blorp'" in err and "Traceback" not in err
    assert not out.exists()
    m = build_class_map(vocab, names=names, allow_unmapped=True)
    assert [c.name for c in m.classes] == ["dog", "cat"] and [c.index for c in m.classes] == [0, 1]
    assert m.unmapped == ["qwxzzy blorp", "meteorology"]
    assert main(["classes", "--vocab", str(vocab), "--names", str(names), "--allow-unmapped", "--out", str(out)]) == 0  # fmt: skip
    assert "left out 2 unmapped: qwxzzy blorp, meteorology" in capsys.readouterr().out
    assert json.loads(out.read_text())["unmapped"] == ["qwxzzy blorp", "meteorology"]


def test_names_files_and_bad_inputs(tmp_path: Path, nltk_ready: None) -> None:
    f = tmp_path / "names.yaml"
    f.write_text("path: .\nnames:\n  1: cat\n  0: dog\n")
    assert read_names(f) == ["dog", "cat"]
    f.write_text("names: [dog, cat]\n")
    assert read_names(f) == ["dog", "cat"]
    f.write_text("names:\n  0: dog\n  2: cat\n")
    with pytest.raises(ClassMapError, match="class ids must be 0..1"):
        read_names(f)
    t = tmp_path / "names.txt"
    t.write_text("dog\nDog\n")
    with pytest.raises(ClassMapError, match="'Dog' appears twice"):
        read_names(t)
    vocab = synset_vocab(tmp_path, ["dog.n.01"])
    with pytest.raises(ClassMapError, match="nope.txt: no such names file"):
        build_class_map(vocab, names=tmp_path / "nope.txt")
    with pytest.raises(ClassMapError, match="no such vocabulary"):
        build_class_map(tmp_path / "v.tsv", names=t)
    with pytest.raises(ClassMapError, match="no such file"):
        ClassMap.load(tmp_path / "missing.json")


def test_word_row_must_be_a_sense_of_that_word(tmp_path: Path, nltk_ready: None) -> None:
    """A word's row counts only when its synset is a sense of the very word: captions' "weeds" are
    labelled weed.n.01 (the plant), which is no sense of "weeds" (weeds.n.01: mourning clothes)."""
    from nltk.corpus import wordnet as wn

    mapper = ClassMapper(Vocabulary.load(synset_vocab(tmp_path, ["weed.n.01", "grass.n.01"])))
    assert mapper.word_row("weeds") == 0  # what the labeler does with the word
    assert mapper.rows_for(wn.synset("weeds.n.01")) is None
    assert mapper.rows_for(wn.synset("weed.n.01")) == ([0], 0, "")


@pytest.mark.parametrize("command", ["classes", "predict", "evaluate"])
def test_help_explains_the_commands(command: str, capsys) -> None:
    from engine.cli import EPILOG, main

    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert f"usage: catlip {command}" in text and "CLASSES.json" in text and len(text) > 600
    assert f"catlip {command} --" in EPILOG
