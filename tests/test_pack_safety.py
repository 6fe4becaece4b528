"""``catlip pack`` never destroys its inputs or a folder it did not write, and treats odd caption
files as the other commands do: an empty file refused, a caption that is not text a counted
reject, a UTF-8 byte-order mark ignored, an overlong caption cut (and counted)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from engine.cli import main

pytestmark = pytest.mark.usefixtures("nltk_ready")


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def imgs(tmp_path: Path, shared_data: Path) -> Path:
    """Four photos, their captions and an unrelated file in ``tmp_path/imgs``."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    photos = sorted((shared_data / "coco_photos").glob("*.jpg"))[:4]
    for p in photos:
        shutil.copy(p, folder)
    (folder / "captions.tsv").write_text("".join(f"{p.name}\ta dog on a red sofa\n" for p in photos))
    (folder / "notes.txt").write_text("not a photo, not a caption: mine\n")
    return folder


def _pack(*args: str) -> None:
    main(["pack", *args, "--quiet", "--workers", "1"])


@pytest.mark.parametrize(
    ("out", "clash"),
    [
        ("imgs", "is the image folder"),  # the data loss: imgs/ was replaced by the pack
        (".", "holds the caption file"),  # would remove the working folder
        ("imgs/shards", "is inside the image folder"),
        ("vocab.tsv", "is the vocabulary"),
    ],
)
def test_out_on_inside_or_above_an_input_is_refused_before_anything_is_touched(
    imgs: Path, photo_vocab: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, out: str, clash: str
) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copy(photo_vocab, tmp_path / "vocab.tsv")
    before = _tree(tmp_path)
    args = ["--tsv", "imgs/captions.tsv", "--images", "imgs", "--vocab", "vocab.tsv", "--overwrite"]
    with pytest.raises(SystemExit, match=f"--out .* {clash} .*: a pack goes to a folder of its own"):
        _pack(*args, "--out", out)
    assert _tree(tmp_path) == before
    assert not list(tmp_path.rglob("*.partial"))


def test_overwrite_replaces_only_an_earlier_pack_or_an_empty_folder(
    imgs: Path, photo_vocab: Path, tmp_path: Path
) -> None:
    common = ["--tsv", str(imgs / "captions.tsv"), "--images", str(imgs), "--vocab", str(photo_vocab)]
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("years of work\n")
    with pytest.raises(SystemExit, match="is not a pack made by `catlip pack`"):
        _pack(*common, "--out", str(other), "--overwrite")
    assert (other / "thesis.tex").read_text() == "years of work\n"
    empty = tmp_path / "empty"
    empty.mkdir()
    _pack(*common, "--out", str(empty), "--overwrite")
    meta = json.loads((empty / "dataset.json").read_text())
    assert meta["samples"] == 4 and meta["format"] == "catlip-pack/1"
    (empty / "notes.txt").write_text("added by hand\n")  # a pack, with something else in it
    with pytest.raises(SystemExit, match=r"also holds what `catlip pack` did not write \(notes.txt\)"):
        _pack(*common, "--out", str(empty), "--overwrite")
    assert (empty / "notes.txt").is_file()
    (empty / "notes.txt").unlink()
    before = _tree(empty)
    _pack(*common, "--out", str(empty), "--overwrite")  # an earlier pack: replaced
    assert _tree(empty) == before


def test_an_empty_caption_file_is_refused_as_vocab_refuses_it(
    imgs: Path, photo_vocab: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty.tsv").write_text("")
    args = ["--tsv", str(tmp_path / "empty.tsv"), "--images", str(imgs), "--vocab", str(photo_vocab)]
    assert main(["pack", *args, "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "empty.tsv: no captions in it, so the pack would be empty; nothing written" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_a_coco_caption_that_is_not_text_is_a_counted_reject(
    imgs: Path, photo_vocab: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = sorted(p.name for p in imgs.glob("*.jpg"))
    captions = ["a dog on a sofa", None, 7, "a cat on a table"]
    coco = {
        "images": [{"id": i, "file_name": name} for i, name in enumerate(photos)],
        "annotations": [{"id": i, "image_id": i, "caption": c} for i, c in enumerate(captions)],
    }
    (tmp_path / "captions.json").write_text(json.dumps(coco))
    out = tmp_path / "out"
    _pack(
        "--coco",
        str(tmp_path / "captions.json"),
        "--images",
        str(imgs),
        "--vocab",
        str(photo_vocab),
        "--out",
        str(out),
    )
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["samples"] == 2 and meta["rejects"] == {"caption not text": 2}
    assert f"skipped {photos[1]}: caption not text" in capsys.readouterr().out
    rejected = {line.split("\t")[1] for line in (out / "rejects.tsv").read_text().splitlines()[1:]}
    assert rejected == {photos[1], photos[2]}


def test_a_byte_order_mark_does_not_hide_the_first_image(
    imgs: Path, photo_vocab: Path, tmp_path: Path
) -> None:
    tsv = tmp_path / "bom.tsv"
    tsv.write_bytes(b"\xef\xbb\xbf" + (imgs / "captions.tsv").read_bytes())  # as Notepad saves UTF-8
    out = tmp_path / "out"
    _pack("--tsv", str(tsv), "--images", str(imgs), "--vocab", str(photo_vocab), "--out", str(out))
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["samples"] == 4 and meta["rejects"] == {}


def test_an_overlong_caption_is_cut_and_counted(imgs: Path, photo_vocab: Path, tmp_path: Path) -> None:
    import time

    from shard_utils import read_all

    photos = sorted(p.name for p in imgs.glob("*.jpg"))
    long = "a dog on a red sofa beside a cat " * 60_000  # ~2 MB on one line
    tsv = tmp_path / "long.tsv"
    tsv.write_text(f"{photos[0]}\t{long}\n" + "".join(f"{p}\ta cat\n" for p in photos[1:]))
    out = tmp_path / "out"
    start = time.monotonic()
    _pack(
        "--tsv",
        str(tsv),
        "--images",
        str(imgs),
        "--vocab",
        str(photo_vocab),
        "--out",
        str(out),
        "--keep-order",
    )
    assert time.monotonic() - start < 60
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["samples"] == 4 and meta.get("captions_cut") == 1
    from catlip.captions import MAX_CAPTION_CHARS

    texts = sorted(len(s["txt"]) for s in read_all(out).values())
    assert texts == [5, 5, 5, MAX_CAPTION_CHARS]
