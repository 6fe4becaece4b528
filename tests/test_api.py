"""catlip's Python front door (catlip/api.py): create_model_and_transforms from a checkpoint, a
safetensors export (either format) or an export folder; its PIL eval transform against the
trainer's (DALI) one; zero_shot_classifier and tag against `catlip classes` / `catlip predict`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_catlip import SIZE, SYNSETS, coco128_images, write_checkpoint, write_vocab

import catlip
from catlip.api import ApiError, EvalTransform
from engine.cli import main

NAMES = ["dog", "cat", "car", "bus", "person", "pizza", "fire truck", "chair"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory, nltk_ready: None) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("api")
    vocab = write_vocab(root / "vocab.tsv")
    run = write_checkpoint(root / "run", vocab)
    out = {"run": run, "vocab": vocab, "root": root}
    for key, argv in {
        "file": ["--out", str(root / "m.safetensors")],
        "timm_file": ["--out", str(root / "t.safetensors"), "--format", "timm"],
        "folder": ["--out", str(root / "export")],
    }.items():
        assert main(["export", str(run), *argv]) == 0
        out[key] = Path(argv[1])
    return out


def noise_images(root: Path, sizes: list[tuple[int, int]]) -> list[Path]:
    """PNGs of the given (width, height): smooth random colour fields (8 x 6 random pixels,
    resized bicubically) with a flat block, a photo's mix of gradients and edges."""
    paths = []
    for i, (w, h) in enumerate(sizes):
        rng = np.random.RandomState(i)
        field = Image.fromarray(rng.randint(0, 255, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        pixels = np.array(field)
        pixels[: h // 2, : w // 3] = rng.randint(0, 255, 3)
        Image.fromarray(pixels).save(root / f"{i}.png")
        paths.append(root / f"{i}.png")
    return paths


ODD_SIZES = [(97, 65), (63, 100), (131, 65), (64, 64), (65, 64), (67, 90), (640, 427), (333, 500)]


def test_every_source_gives_the_same_model_transform_and_labels(sources) -> None:
    images = noise_images(sources["root"], ODD_SIZES[:3])
    got = {}
    for key in ("run", "file", "timm_file", "folder"):
        model, transform, labels = catlip.create_model_and_transforms(sources[key])
        assert labels == SYNSETS and not model.training and transform.image_size == SIZE
        assert model.catlip_info.labels is labels
        with torch.no_grad():
            got[key] = model(torch.stack([transform(p) for p in images]))  # (3, V)
        assert got[key].shape == (3, len(SYNSETS))
    for key in ("file", "timm_file", "folder"):
        torch.testing.assert_close(got[key], got["run"], atol=1e-5, rtol=1e-5)
    model, transform, _ = catlip.create_model_and_transforms(sources["folder"])
    assert model.catlip_info.vocab_path == sources["folder"] / "vocab.tsv"


def test_a_run_folder_with_the_trainers_config_json_is_a_checkpoint(sources, tmp_path: Path) -> None:
    """The trainer writes config.json into its out_dir; that folder is still a checkpoint, not an
    export folder (which is told by its model.safetensors), as `catlip predict` reads it."""
    run = write_checkpoint(tmp_path / "run", sources["vocab"])
    (run / "config.json").write_text(json.dumps({"model": {"name": "vit_tiny"}}))
    model, _, labels = catlip.create_model_and_transforms(run)
    assert labels == SYNSETS and model.catlip_info.source != run / "config.json"


def test_the_pil_transform_is_the_trainers_eval_transform(sources, tmp_path: Path) -> None:
    """Against engine.data.ImageTransform (DALI; the loader's eval branch): the same sizes and
    crop on odd shapes, pixels within a level or two (DALI's and PIL's filters round apart)."""
    from catlip import api
    from engine.data import CLIP_MEAN, CLIP_STD, ImageTransform

    assert (api.CLIP_MEAN, api.CLIP_STD) == (CLIP_MEAN, CLIP_STD)  # catlip/ keeps its own copy
    transform = EvalTransform(SIZE)
    dali = ImageTransform(SIZE, batch_size=len(ODD_SIZES), num_threads=1)
    paths = noise_images(tmp_path, ODD_SIZES)
    ours = torch.stack([transform(p) for p in paths])  # (N, 3, S, S)
    theirs = dali([p.read_bytes() for p in paths])
    levels = (ours - theirs).abs() * transform.std.view(1, 3, 1, 1) * 255
    assert levels.mean() < 0.5, levels.mean()
    assert (levels > 3).float().mean() < 0.01  # a shifted crop would move most pixels by tens of levels
    same = ours[3], theirs[3]  # 64 x 64: no resize, no crop
    torch.testing.assert_close(*same, atol=1e-5, rtol=0)
    # a PIL image and its path give the same tensor
    torch.testing.assert_close(transform(Image.open(paths[0])), ours[0])


def test_zero_shot_classifier_maps_names_as_catlip_classes(sources, tmp_path: Path) -> None:
    from catlip.classes import ClassMap

    (tmp_path / "names.txt").write_text("\n".join(NAMES) + "\n")
    assert main(["classes", "--vocab", str(sources["vocab"]), "--names", str(tmp_path / "names.txt"), "--out", str(tmp_path / "c.json")]) == 0  # fmt: skip
    want = ClassMap.load(tmp_path / "c.json")
    for key in ("run", "folder"):
        model, transform, _ = catlip.create_model_and_transforms(sources[key])
        classify = catlip.zero_shot_classifier(model, NAMES)
        assert classify.names == NAMES
        assert [c.rows for c in classify.class_map.classes] == [c.rows for c in want.classes]
        x = torch.stack([transform(p) for p in noise_images(tmp_path, ODD_SIZES[:2])])
        scores = classify(x)  # (2, C)
        with torch.no_grad():
            logits = model(x)
        assert scores.shape == (2, len(NAMES))
        for c, entry in enumerate(want.classes):
            torch.testing.assert_close(scores[:, c], logits[:, entry.rows].amax(dim=1))
    with pytest.raises(ApiError, match=r"'qwertyuiop'"):
        catlip.zero_shot_classifier(model, ["dog", "qwertyuiop"])
    classify = catlip.zero_shot_classifier(model, ["qwertyuiop"], overrides={"qwertyuiop": "dog.n.01"})
    assert classify.class_map.classes[0].rows == [SYNSETS.index("dog.n.01")]


def test_api_predictions_equal_catlip_predicts(sources, tmp_path: Path, capsys) -> None:
    """The API's scores of each image equal `catlip predict`'s (the DALI eval transform), ranked
    the same; coco128's photos where ../shared has them, odd-sized noise images always."""
    (tmp_path / "names.txt").write_text("\n".join(NAMES) + "\n")
    assert main(["classes", "--vocab", str(sources["vocab"]), "--names", str(tmp_path / "names.txt"), "--out", str(tmp_path / "c.json")]) == 0  # fmt: skip
    images = [*coco128_images(24), *noise_images(tmp_path, ODD_SIZES)]
    capsys.readouterr()
    argv = ["predict", "--checkpoint", str(sources["folder"])]  # predict reads the export folder too
    assert main([*argv, "--classes", str(tmp_path / "c.json"), "--top", "3", *map(str, images)]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if not ln.startswith("[20")]
    printed = {}  # path -> [(name, logit)] as `catlip predict` prints them
    for line in lines:
        if line.endswith(":") and not line.startswith(" "):
            path = line[:-1]
            printed[path] = []
        else:  # "   1. fire truck  0.9526  (logit +3.000)"
            rank = re.fullmatch(r"\s*\d+\. (.+?)\s+[\d.]+\s+\(logit ([+-][\d.]+)\)", line)
            printed[path].append((rank[1], float(rank[2])))
    model, transform, _ = catlip.create_model_and_transforms(sources["folder"])
    classify = catlip.zero_shot_classifier(model, NAMES)
    scores = classify(torch.stack([transform(p) for p in images]))  # (N, C)
    for path, row in zip(images, scores, strict=True):
        values, order = row.topk(3)
        ours = [(NAMES[int(i)], float(v)) for v, i in zip(values, order, strict=True)]
        theirs = printed[str(path)]
        assert [n for n, _ in ours] == [n for n, _ in theirs], path
        np.testing.assert_allclose([v for _, v in ours], [v for _, v in theirs], atol=0.25, rtol=0.02)
    assert len(printed) == len(images)


def test_tag_gives_the_top_synsets_and_their_probabilities(sources, tmp_path: Path) -> None:
    model, transform, labels = catlip.create_model_and_transforms(sources["folder"])
    (path,) = noise_images(tmp_path, [(80, 60)])
    tags = catlip.tag(model, path, top_k=4)
    with torch.no_grad():
        probs = torch.sigmoid(model(transform(path)[None]))[0]  # (V,)
    values, rows = probs.topk(4)
    assert [t for t, _ in tags] == [labels[int(r)] for r in rows]
    np.testing.assert_allclose([p for _, p in tags], values.numpy(), rtol=1e-6)
    assert catlip.tag(model, Image.open(path), top_k=4) == tags
    assert len(catlip.tag(model, path, top_k=1000)) == len(SYNSETS)
    with pytest.raises(ApiError, match="top_k must be >= 1"):
        catlip.tag(model, path, top_k=0)


def test_bad_sources_are_errors_naming_them(sources, tmp_path: Path, capsys) -> None:
    with pytest.raises(ApiError, match="nope: no such file or directory"):
        catlip.create_model_and_transforms(tmp_path / "nope")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "config.json").write_text(json.dumps({"architecture": "resnet50"}))
    # a config.json alone (a run's out_dir has the trainer's): read as a checkpoint, and named
    with pytest.raises(ApiError, match="dir: not a usable checkpoint .*no DeepSpeed model states"):
        catlip.create_model_and_transforms(tmp_path / "dir")
    (tmp_path / "dir" / "model.safetensors").write_bytes(
        (sources["folder"] / "model.safetensors").read_bytes()
    )
    with pytest.raises(ApiError, match="not a `catlip export --out DIR` folder"):
        catlip.create_model_and_transforms(tmp_path / "dir")
    (tmp_path / "names.txt").write_text("dog\n")
    assert main(["classes", "--vocab", str(sources["vocab"]), "--names", str(tmp_path / "names.txt"), "--out", str(tmp_path / "c.json")]) == 0  # fmt: skip
    image = noise_images(tmp_path, [(70, 50)])[0]
    argv = [
        "predict",
        "--checkpoint",
        str(tmp_path / "dir"),
        "--classes",
        str(tmp_path / "c.json"),
        str(image),
    ]
    assert main(argv) == 2
    assert "has no catlip_config (not a `catlip export` folder)" in capsys.readouterr().err
    with pytest.raises(ApiError, match="no catlip_info"):
        catlip.tag(torch.nn.Linear(2, 2), tmp_path / "x.png")
    # the recorded vocabulary gone: an error saying to give vocab=; vocab= with the file works
    moved = tmp_path / "vocab.tsv"
    moved.write_bytes(sources["vocab"].read_bytes())
    gone = tmp_path / "gone.tsv"
    write_vocab(gone)
    run = write_checkpoint(tmp_path / "run", gone)
    gone.unlink()
    with pytest.raises(ApiError, match="gone.tsv: no such file"):
        catlip.create_model_and_transforms(run)
    assert catlip.create_model_and_transforms(run, vocab=moved)[2] == SYNSETS


def test_import_catlip_stays_light_and_an_export_loads_without_deepspeed_or_dali(sources) -> None:
    code = (
        "import sys, catlip\n"
        "assert 'torch' not in sys.modules\n"
        f"catlip.create_model_and_transforms({str(sources['folder'])!r})\n"
        "print(sorted(m for m in ('deepspeed', 'nvidia.dali', 'triton') if m in sys.modules))\n"
        "catlip.no_such_thing\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "[]", proc.stderr[-2000:]
    assert "AttributeError: module 'catlip' has no attribute 'no_such_thing'" in proc.stderr
