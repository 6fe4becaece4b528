"""``catlip export``: the folder as the Hugging Face hub and timm lay one out (config.json with the
eval transform and the label names, model.safetensors under timm's names, the vocabulary), which
real timm builds through its public API and reads as ``catlip predict`` does; and the single-file
exports as before."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from tiny_catlip import SIZE, SYNSETS, coco128_images, write_checkpoint, write_vocab

from catlip.classes import vocab_sha256
from engine.cli import main
from engine.data import CLIP_MEAN, CLIP_STD

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, nltk_ready: None) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    vocab = write_vocab(root / "vocab.tsv")
    (root / "vocab.tsv.json").write_text(json.dumps({"labeler": {"name": "catlip-1", "pos_filter": True}}))
    write_checkpoint(root / "run", vocab)
    return {"root": root, "run": root / "run", "vocab": vocab}


@pytest.fixture(scope="module")
def folder(run: dict[str, Path]) -> Path:
    out = run["root"] / "export"
    assert main(["export", str(run["run"]), "--out", str(out)]) == 0
    return out


def test_folder_is_timms_layout_with_the_eval_transform_and_the_labels(run, folder: Path) -> None:
    from nltk.corpus import wordnet as wn

    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "model.safetensors",
        "vocab.tsv",
        "vocab.tsv.json",
    ]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "vit_tiny_patch16_224"
    assert config["model_args"] == {"img_size": SIZE, "patch_size": 8, "embed_dim": 96, "depth": 4}
    assert config["num_classes"] == len(SYNSETS) and config["global_pool"] == "token"
    cfg = config["pretrained_cfg"]
    assert cfg["input_size"] == [3, SIZE, SIZE] and cfg["crop_pct"] == 1.0 and cfg["crop_mode"] == "center"
    assert cfg["interpolation"] == "bilinear" and cfg["num_classes"] == len(SYNSETS)
    assert cfg["mean"] == list(CLIP_MEAN) and cfg["std"] == list(CLIP_STD)
    assert config["label_names"] == SYNSETS
    assert config["label_descriptions"] == {n: wn.synset(n).definition() for n in SYNSETS}
    assert config["vocab"] == {
        "vocab_size": len(SYNSETS),
        "vocab_sha256": vocab_sha256(run["vocab"]),
        "labeler": {"name": "catlip-1", "pos_filter": True},
    }
    assert config["catlip_config"]["model"]["name"] == "vit_tiny"
    assert (folder / "vocab.tsv").read_bytes() == run["vocab"].read_bytes()
    names = set(load_file(str(folder / "model.safetensors")))
    assert {
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "blocks.3.mlp.fc2.bias",
        "head.weight",
    } <= names
    assert not any(n.startswith("encoder.") for n in names)


def test_single_files_keep_their_format_and_metadata(run, tmp_path: Path) -> None:
    ours, timm_file = tmp_path / "m.safetensors", tmp_path / "t.safetensors"
    assert main(["export", str(run["run"]), "--out", str(ours)]) == 0
    assert main(["export", str(run["run"]), "--out", str(timm_file), "--format", "timm"]) == 0
    with safe_open(str(ours), "pt") as f:
        meta, keys = f.metadata(), set(f.keys())
    assert set(meta) == {
        "catlip_config",
        "vocab",
        "step",
        "weights",
        "catlip_version",
        "checkpoint_catlip_version",
    }
    assert json.loads(meta["vocab"])["vocab_sha256"] == vocab_sha256(run["vocab"])
    assert "encoder.cls_token" in keys and "head.weight" in keys
    with safe_open(str(timm_file), "pt") as f:
        meta, keys = f.metadata(), set(f.keys())
    assert meta["format"] == "timm" and meta["timm_model"] == "vit_tiny_patch16_224" and "cls_token" in keys
    assert not any(p.is_dir() for p in tmp_path.iterdir())  # files, not folders


def test_export_errors_name_what_to_give(run, tmp_path: Path, capsys) -> None:
    out = tmp_path / "dir"
    assert main(["export", str(run["run"]), "--out", str(out), "--format", "catlip"]) == 2
    assert "is a folder, which is timm's layout" in capsys.readouterr().err and not out.exists()
    assert main(["export", str(run["run"]), "--out", str(tmp_path / "f.safetensors"), "--vocab", "x"]) == 2
    assert "--vocab is for a folder export" in capsys.readouterr().err
    # the recorded vocabulary moved away: an error naming it, then --vocab with the same bytes works
    moved, run_copy = tmp_path / "moved.tsv", tmp_path / "run"
    write_vocab(tmp_path / "gone.tsv")
    write_checkpoint(run_copy, tmp_path / "gone.tsv")
    (tmp_path / "gone.tsv").rename(moved)
    assert main(["export", str(run_copy), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'gone.tsv'}: no such file (give the run's vocab.tsv with --vocab)" in err
    assert "Traceback" not in err and not out.exists()
    other = tmp_path / "other.tsv"
    other.write_text(moved.read_text().replace("\t100\n", "\t101\n"))
    assert main(["export", str(run_copy), "--out", str(out), "--vocab", str(other)]) == 2
    assert f"--vocab {other} has SHA-256" in capsys.readouterr().err and not out.exists()
    (tmp_path / "moved.tsv.json").write_text(
        json.dumps({"labeler": {"name": "corenet", "pos_filter": False}})
    )
    assert main(["export", str(run_copy), "--out", str(out), "--vocab", str(moved)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["label_names"] == SYNSETS and config["vocab"]["labeler"]["name"] == "catlip-1"  # recorded
    assert (out / "vocab.tsv.json").is_file()  # the sidecar, renamed beside vocab.tsv
    # a checkpoint from before the labeler record: the vocabulary's sidecar names it
    old = tmp_path / "old"
    write_checkpoint(old, moved, labeler=False)
    assert main(["export", str(old), "--out", str(tmp_path / "old_out")]) == 0
    assert json.loads((tmp_path / "old_out" / "config.json").read_text())["vocab"]["labeler"] == {
        "name": "corenet",
        "pos_filter": False,
    }
    # a fine-tuned run's head is no vocabulary's: a file, not a folder
    tuned = tmp_path / "tuned"
    write_checkpoint(tuned, moved, objective="finetune")
    assert main(["export", str(tuned), "--out", str(tmp_path / "tuned_out")]) == 2
    err = capsys.readouterr().err
    assert "trained with objective 'finetune'" in err and "--out F.safetensors" in err
    assert not (tmp_path / "tuned_out").exists()


@pytest.mark.slow
@pytest.mark.skipif(not coco128_images(1), reason="needs ../shared/data/coco128 (the coco128 images)")
def test_real_timm_builds_the_folder_and_predicts_as_catlip_predict(
    run, folder: Path, tmp_path: Path
) -> None:
    """timm.create_model("local-dir:DIR", pretrained=True) and timm's own transform from the folder's
    config give `catlip predict`'s logits on coco128 (the DALI eval transform), every synset."""
    from catlip.classes import build_class_map
    from engine.zeroshot import ZeroShotClassifier, predict

    images = coco128_images(48)
    job = {"folders": [{"dir": str(folder), "images": [str(p) for p in images], "out": str(tmp_path / "t")}]}
    (tmp_path / "job.json").write_text(json.dumps(job))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    cmd = f"source scripts/env_interop.sh >&2 && python tests/interop_check.py {tmp_path}/job.json {tmp_path}/r.json"
    proc = subprocess.run(
        ["bash", "-c", cmd], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200
    )
    assert proc.returncode == 0, f"interop_check.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    (result,) = json.loads((tmp_path / "r.json").read_text())["folders"]
    assert result["data_config"] == {
        "input_size": [3, SIZE, SIZE],
        "interpolation": "bilinear",
        "mean": list(CLIP_MEAN),
        "std": list(CLIP_STD),
        "crop_pct": 1.0,
        "crop_mode": "center",
    }
    assert result["label_names"] == SYNSETS and result["num_classes"] == len(SYNSETS)
    theirs = load_file(str(tmp_path / "t"))["logits"]  # (N, V)

    # catlip predict over every synset of the vocabulary: each class is its own row
    wnids = [line.split("\t")[1] for line in (folder / "vocab.tsv").read_text().splitlines()[1:]]
    (tmp_path / "wnids.txt").write_text("\n".join(wnids) + "\n")
    class_map = build_class_map(folder / "vocab.tsv", wnids=tmp_path / "wnids.txt")
    assert [c.rows for c in class_map.classes] == [[i] for i in range(len(SYNSETS))]
    class_map.save(tmp_path / "classes.json")
    classifier = ZeroShotClassifier.from_files(run["run"], tmp_path / "classes.json", device="cpu")
    done, skipped = predict(classifier, images, top=len(SYNSETS), batch_size=16)
    assert not skipped and [p.path for p in done] == [str(p) for p in images]
    row = {name: i for i, name in enumerate(classifier.names)}
    ours = torch.zeros(len(images), len(SYNSETS))
    for i, p in enumerate(done):
        for name, _, score in p.top:
            ours[i, row[name]] = score
    diff = (theirs - ours).abs()
    print(
        f"timm vs catlip predict on {len(images)} coco128 images: max |logit diff| {diff.max():.4f}, "
        f"mean {diff.mean():.5f}, max |logit| {ours.abs().max():.2f}"
    )
    assert torch.equal(theirs.topk(5, dim=1).indices, ours.topk(5, dim=1).indices)
    # DALI's antialiased linear filter and PIL's bilinear one differ by about a level in some pixels
    torch.testing.assert_close(theirs, ours, atol=0.25, rtol=0.02)

    # catlip's own PIL transform is timm's: the same logits to fp32 rounding
    import catlip

    model, transform, labels = catlip.create_model_and_transforms(folder)
    with torch.no_grad():
        api = model(torch.stack([transform(p) for p in images]))  # (N, V)
    assert labels == SYNSETS
    torch.testing.assert_close(api, theirs, atol=1e-4, rtol=1e-4)


def test_without_wordnet_the_folder_export_says_how_to_get_it(run, tmp_path: Path) -> None:
    code = (
        "import sys, nltk\n"
        "nltk.data.path[:] = ['/nonexistent']\n"
        "from engine.cli import main\n"
        f"sys.exit(main(['export', {str(run['run'])!r}, '--out', {str(tmp_path / 'out')!r}]))\n"
    )
    env = {**os.environ, "NLTK_DATA": "/nonexistent"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "NLTK's WordNet data is not installed: run `catlip setup-nltk`" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
