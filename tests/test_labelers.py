"""Labelers through the commands: the vocabulary names its labeler and sense table, packing takes
the vocabulary's labeler (or its labels file) and refuses another, training refuses shards of two
labelers, and ``catlip classes`` reads class names with the vocabulary's sense rules."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from catlip.labels import LabelerSpec, senses_path, vocab_meta_path
from catlip.vocab import LabelsFile, build_vocabulary, write_vocabulary
from engine.cli import main
from engine.packing import PackError, TsvSource, pack

pytestmark = pytest.mark.usefixtures("nltk_ready")


@pytest.fixture(scope="module")
def small(shared_data: Path, tmp_path_factory) -> Path:
    """40 COCO photos' captions, a catlip-2 vocabulary of them with its labels file, and (as a
    vocabulary of another labeler) the same captions' catlip-1 vocabulary."""
    root = tmp_path_factory.mktemp("small")
    photos = shared_data / "coco_photos"
    lines = (photos / "captions.tsv").read_text().splitlines()[:200]
    (root / "captions.tsv").write_text("\n".join(lines) + "\n")
    captions = [line.split("\t", 1)[1] for line in lines]
    vocab, stats = build_vocabulary(captions, min_count=1, labels_out=root / "labels.tsv", progress=False)
    write_vocabulary(root / "vocab.tsv", vocab, stats)
    vocab1, stats1 = build_vocabulary(captions, min_count=1, labeler="catlip-1", labels_out=root / "labels1.tsv", progress=False)  # fmt: skip
    write_vocabulary(root / "vocab1.tsv", vocab1, stats1)
    return root


def _pack(small: Path, shared_data: Path, out: str, **kw):
    source = TsvSource(small / "captions.tsv", shared_data / "coco_photos")
    return pack(
        source, small / out, kw.pop("vocab", small / "vocab.tsv"), shard_size=64, progress=False, **kw
    )


def test_the_vocabulary_records_its_labeler_and_sense_table(small: Path) -> None:
    meta = json.loads(vocab_meta_path(small / "vocab.tsv").read_text())
    spec = LabelerSpec.from_record(meta["labeler"])
    assert spec.name == "catlip-2" and meta["senses"] == senses_path(small / "vocab.tsv").name
    from catlip.senses import SenseTable

    assert SenseTable.load(senses_path(small / "vocab.tsv")).sha256 == spec.senses_sha256
    assert json.loads(vocab_meta_path(small / "vocab1.tsv").read_text())["labeler"] == {
        "name": "catlip-1",
        "pos_filter": True,
    }
    assert not senses_path(small / "vocab1.tsv").exists()


def test_a_labels_file_packs_the_same_shards_as_labelling_in_pack(small: Path, shared_data: Path) -> None:
    spec, known = LabelsFile.read(small / "labels.tsv")
    assert len(known) > 150 and spec == LabelerSpec.of_meta(
        json.loads(vocab_meta_path(small / "vocab.tsv").read_text())
    )
    _pack(small, shared_data, "labelled")
    stats = _pack(small, shared_data, "from_file", labels=small / "labels.tsv")
    assert stats.splits["all"].labelled_here == 0
    a, b = small / "labelled", small / "from_file"
    names = sorted(p.name for p in a.iterdir() if p.suffix in (".tar", ".idx"))
    assert names and names == sorted(p.name for p in b.iterdir() if p.suffix in (".tar", ".idx"))
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    meta = json.loads((b / "dataset.json").read_text())
    assert meta["labeler"] == json.loads((a / "dataset.json").read_text())["labeler"]
    assert meta["labels"] == str(small / "labels.tsv") and meta["captions_labelled_here"] == 0


def test_captions_missing_from_the_labels_file_are_labelled_and_counted(
    small: Path, shared_data: Path
) -> None:
    lines = (small / "labels.tsv").read_text().splitlines()
    (small / "partial.tsv").write_text("\n".join(lines[:50]) + "\n")  # the header and 49 captions
    stats = _pack(small, shared_data, "partial_pack", labels=small / "partial.tsv")
    assert 0 < stats.splits["all"].labelled_here <= 200 - 49
    for name in ("shard-000000.tar", "shard-000001.tar"):
        assert (small / "partial_pack" / name).read_bytes() == (small / "labelled" / name).read_bytes()


def test_packing_with_another_labeler_is_refused_naming_both(small: Path, shared_data: Path) -> None:
    with pytest.raises(
        PackError, match="built with labeler catlip-2, but this pack was asked to label with catlip-1"
    ):
        _pack(small, shared_data, "x1", labeler="catlip-1")
    with pytest.raises(
        PackError, match=r"labelled by catlip-2 \(sense table .*--labels .*labels1.tsv by catlip-1"
    ):
        _pack(small, shared_data, "x2", labels=small / "labels1.tsv")
    assert not (small / "x1").exists() and not (small / "x2").exists()
    # the command line says the same, exit 1 (a pack error), and `catlip labels` refuses it too
    args = ["pack", "--tsv", str(small / "captions.tsv"), "--images", str(shared_data / "coco_photos")]
    with pytest.raises(SystemExit, match="built with labeler catlip-2, but this pack .* catlip-1"):
        main(
            [*args, "--vocab", str(small / "vocab.tsv"), "--out", str(small / "x3"), "--labeler", "catlip-1"]
        )
    assert main(["labels", "--vocab", str(small / "vocab.tsv"), "--official", "a dog"]) == 2


def test_a_vocabulary_without_its_sense_table_is_refused(
    small: Path, shared_data: Path, tmp_path: Path
) -> None:
    shutil.copy(small / "vocab.tsv", tmp_path / "vocab.tsv")
    shutil.copy(vocab_meta_path(small / "vocab.tsv"), vocab_meta_path(tmp_path / "vocab.tsv"))
    with pytest.raises(PackError, match="catlip-2 needs its sense table"):
        _pack(small, shared_data, "x4", vocab=tmp_path / "vocab.tsv")
    table = json.loads(senses_path(small / "vocab.tsv").read_text())
    table["entries"]["man"] = {"man.n.01": 9.0}  # a table changed after the vocabulary was built
    senses_path(tmp_path / "vocab.tsv").write_text(json.dumps(table))
    with pytest.raises(PackError, match="the table changed since the vocabulary was built"):
        _pack(small, shared_data, "x5", vocab=tmp_path / "vocab.tsv")


def test_training_refuses_train_and_val_of_two_labelers(small: Path, shared_data: Path) -> None:
    from engine.config import ConfigError
    from engine.data.dataset import _check_labelers

    class D:
        train, val = "a/train", "a/val"

    two = {"labeler": {"name": "catlip-2", "pos_filter": True, "senses_sha256": "ab" * 32}}
    _check_labelers(two, dict(two), D)
    with pytest.raises(
        ConfigError, match=r"data.train \(a/train\) was labelled by catlip-2.*data.val \(a/val\) by catlip-1"
    ):
        _check_labelers(two, {"pos_filter": True, "official": False}, D)  # packed before labelers had names


def test_classes_read_names_with_the_vocabularys_sense_rules(tmp_path: Path, shared_data: Path) -> None:
    """On a catlip-2 vocabulary of the COCO val2017 captions: a physical or visible sense for the
    names whose first WordNet sense is something else, and the row captions got for that word."""
    from catlip.captions import iter_captions
    from catlip.classes import build_class_map

    captions = [c for _, c in iter_captions(shared_data / "coco_captions_val2017.json")]
    vocab, stats = build_vocabulary(captions[::4], min_count=2, progress=False)
    write_vocabulary(tmp_path / "vocab.tsv", vocab, stats)
    m = build_class_map(
        tmp_path / "vocab.tsv", names=shared_data / "coco128" / "names.yaml", allow_unmapped=True
    )
    by = {c.name: c for c in m.classes}
    assert by["tv"].synset == "television_receiver.n.01"  # not television.n.01, the broadcasting
    assert by["kite"].synset == "kite.n.03" and by["book"].synset == "book.n.02"
    assert by["stop sign"].synset in ("sign.n.02", "signboard.n.01")  # not sign.n.01, an indication
    assert by["hot dog"].synset in ("hotdog.n.02", "frank.n.02")  # food, not the show-off
    assert by["toilet"].synset == "toilet.n.02" and by["couch"].synset == "sofa.n.01"
    assert "lemma, the labeler's sense" in by["tv"].how
