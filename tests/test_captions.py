"""Caption readers (COCO JSON, TSV, WebDataset tar) and the `catlip vocab` / `catlip labels` CLI."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from catlip.captions import CaptionFileError, iter_captions
from engine.cli import main

CAPTIONS = {"1": "A dog on a sofa.", "2": "Two cats & a <b>dog</b>", "3": "", "4": "ein Hund"}


def write_coco(path: Path, captions=CAPTIONS) -> Path:
    anns = [{"image_id": int(k), "id": i, "caption": c} for i, (k, c) in enumerate(captions.items())]
    path.write_text(json.dumps({"images": [], "annotations": anns}, indent=1))
    return path


def write_tsv(path: Path, captions=CAPTIONS) -> Path:
    path.write_text("".join(f"{k}.jpg\t{c}\n" for k, c in captions.items()))
    return path


def write_shard(path: Path, captions=CAPTIONS) -> Path:
    with tarfile.open(path, "w") as tar:
        for key, caption in captions.items():
            for ext, data in (("jpg", b"\xff\xd8\xff\xd9"), ("txt", caption.encode()), ("json", b"{}")):
                info = tarfile.TarInfo(f"{int(key):09d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("writer", [write_coco, write_tsv, write_shard], ids=["coco", "tsv", "webdataset"])
def test_each_format_yields_the_same_captions(tmp_path, writer):
    suffix = {"write_coco": ".json", "write_tsv": ".tsv", "write_shard": ".tar"}[writer.__name__]
    path = writer(tmp_path / f"captions{suffix}")
    got = list(iter_captions(path))
    assert [c for _, c in got] == list(CAPTIONS.values())
    assert [k.lstrip("0") for k, _ in got] == list(CAPTIONS)


def test_real_coco_formats(shared_data):
    coco = list(iter_captions(shared_data / "coco_captions_val2017.json"))
    assert len(coco) == 25_014 and coco[0] == (
        "179765",
        "A black Honda motorcycle parked in front of a garage.",
    )
    tsv = list(iter_captions(shared_data / "coco_photos" / "captions.tsv"))
    assert len(tsv) == 1275 and tsv[0][0] == "000000000139"


def test_tsv_header_and_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "c.tsv"
    path.write_text("file\tcaption\n\na.jpg\ta dog\n\n")
    assert list(iter_captions(path)) == [("a", "a dog")]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "bad.json",
            '{"annotations": [\n {"caption": "a"},\n {"caption": }\n]}',
            r"bad\.json:3:\d+: invalid JSON",
        ),
        ("bad.json", '{"images": []}', r"bad\.json: not a COCO caption file"),
        (
            "bad.json",
            '{"annotations": [{"caption": "a"}, {"image_id": 3}]}',
            r"bad\.json: annotations\[1\] has no 'caption'",
        ),
        ("bad.tsv", "a.jpg\ta dog\nb.jpg\tcat\nno tab here\n", r"bad\.tsv:3: expected 'file<TAB>caption'"),
        ("bad.tsv", b"a.jpg\tok\nb.jpg\t\xff\xfe\n", r"bad\.tsv:2: not UTF-8"),
        ("bad.tar", b"this is not a tar archive" * 40, r"bad\.tar: unreadable tar shard"),
        ("bad.csv", "a,b\n", r"bad\.csv: unknown caption format"),
    ],
)
def test_malformed_files_name_the_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(CaptionFileError, match=message):
        list(iter_captions(path))


@pytest.mark.parametrize("cut", ["half", 1024, 1500, "no end blocks"])
def test_truncated_shard_names_the_file(tmp_path, cut):
    path = write_shard(tmp_path / "s.tar")
    data = path.read_bytes()
    # 1024 and 1500: at and inside the second member's header, where Python's tarfile just stops
    end = {"half": len(data) // 2 + 100, "no end blocks": data.rindex(b"{}") + 512}.get(cut, cut)
    path.write_bytes(data[:end])
    with pytest.raises(CaptionFileError, match=r"s\.tar: unreadable tar shard"):
        list(iter_captions(path))


# -------------------------------------------------------------------------------------------- CLI
@pytest.mark.usefixtures("nltk_ready")
def test_cli_vocab_and_labels(tmp_path, capsys):
    captions = {
        str(i): c for i, c in enumerate(["a dog on a sofa", "two dogs", "a cat and a dog", "a cat", "a bird"])
    }
    tsv = write_tsv(tmp_path / "c.tsv", captions)
    shard = write_shard(tmp_path / "c.tar", captions)
    out = tmp_path / "vocab.tsv"
    assert (
        main(
            [
                "vocab",
                "--captions",
                str(tsv),
                str(shard),
                "--min-count",
                "4",
                "--out",
                str(out),
                "--workers",
                "1",
            ]
        )
        == 0
    )
    summary = capsys.readouterr().out
    assert "captions: 10" in summary and "captions/s" in summary and "vocabulary: 2" in summary
    assert "with no label in the vocabulary: 2 (20.00%)" in summary  # "a bird", twice
    lines = out.read_text().splitlines()
    assert lines[1:] == ["0\tn02084071\tdog.n.01\tdog\t6", "1\tn02121620\tcat.n.01\tcat\t4"]
    assert json.loads(Path(f"{out}.json").read_text())["vocab_size"] == 2

    assert main(["labels", "--vocab", str(out), "A cat chasing dogs.", "nothing here"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        "'A cat chasing dogs.': n02084071 dog.n.01, n02121620 cat.n.01",
        "'nothing here': (no label)",
    ]
    jsonl = tmp_path / "labels.jsonl"
    assert main(["labels", "--vocab", str(out), "--captions", str(tsv), "--out", str(jsonl)]) == 0
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["labels"] for r in rows] == [[0], [0], [0, 1], [1], []]


@pytest.mark.usefixtures("nltk_ready")
def test_cli_errors_are_clear(tmp_path, capsys):
    bad_vocab = tmp_path / "v.tsv"
    bad_vocab.write_text("not a vocabulary\n")
    assert main(["labels", "--vocab", str(bad_vocab), "a dog"]) == 2
    assert "v.tsv:1: not a catlip vocabulary" in capsys.readouterr().err
    bad_tsv = tmp_path / "c.tsv"
    bad_tsv.write_text("a.jpg\tfine\nbroken line\n")
    assert (
        main(["vocab", "--captions", str(bad_tsv), "--out", str(tmp_path / "o.tsv"), "--workers", "1"]) == 2
    )
    assert "c.tsv:2: expected 'file<TAB>caption'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="no such file"):
        main(["vocab", "--captions", str(tmp_path / "absent.json"), "--out", str(tmp_path / "o.tsv")])


@pytest.mark.parametrize(
    "command", [[], ["setup-nltk"], ["vocab"], ["labels"], ["pack"], ["train"], ["export"]]
)
def test_help_explains_every_command(command):
    result = subprocess.run(
        [sys.executable, "-m", "engine", *command, "--help"], capture_output=True, text=True, check=True
    )
    assert "usage: catlip" in result.stdout and len(result.stdout) > 300


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_fast_tar_reader_equals_tarfile_at_every_cut(tmp_path, fmt):
    from catlip.captions import _iter_tarfile, iter_tar_files

    names = ["a.txt", "sub/b.jpg", "y" * 90 + "/" + "z" * 60 + ".txt"]
    if fmt != tarfile.USTAR_FORMAT:  # GNU long names, PAX headers: the tarfile path takes over
        names += ["x" * 120 + ".txt", "é.txt"]
    path = tmp_path / "t.tar"
    with tarfile.open(path, "w", format=fmt) as tar:
        for i, name in enumerate(names):
            data = f"member {i} ".encode() * (37 * i)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        directory = tarfile.TarInfo("a_dir")
        directory.type = tarfile.DIRTYPE
        tar.addfile(directory)
    assert list(iter_tar_files(path)) == list(_iter_tarfile(path))
    assert [n for n, _ in iter_tar_files(path)] == names
    raw = path.read_bytes()
    for cut in range(0, len(raw), 61):
        path.write_bytes(raw[:cut])
        outcomes = []
        for reader in (iter_tar_files, _iter_tarfile):
            try:
                outcomes.append(list(reader(path)))
            except CaptionFileError:
                outcomes.append("error")
        assert outcomes[0] == outcomes[1], cut
