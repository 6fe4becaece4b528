"""Zero-shot readout: catlip predict / evaluate on tiny models whose scores are known by hand."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from catlip.classes import ClassMap, build_class_map, vocab_sha256
from catlip.labels import Vocabulary, wnid
from engine.data import CLIP_MEAN, CLIP_STD

SIZE = 32  # vit_tiny at 32 px: 16 patches of 8
VOCAB = ["dog.n.01", "cat.n.01", "car.n.01", "truck.n.01"]
# classes: dog -> row 0, cat -> row 1, motor vehicle -> rows 2 and 3 (car and truck, 1 link each)
NAMES = ["dog", "cat", "motor vehicle"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, nltk_ready: None) -> dict[str, Path]:
    from nltk.corpus import wordnet as wn

    root = tmp_path_factory.mktemp("zeroshot")
    wnids = [wnid(wn.synset(n).offset()) for n in VOCAB]
    Vocabulary(wnids, VOCAB, [40, 30, 20, 10]).save(root / "vocab.tsv")
    (root / "names.txt").write_text("\n".join(NAMES) + "\n")
    class_map = build_class_map(root / "vocab.tsv", names=root / "names.txt")
    assert [c.rows for c in class_map.classes] == [[0], [1], [2, 3]]
    class_map.save(root / "classes.json")
    # the same class names onto another vocabulary (one more synset): another hash
    Vocabulary([*wnids, wnid(wn.synset("bus.n.01").offset())], [*VOCAB, "bus.n.01"], [5] * 5).save(
        root / "other.tsv"
    )
    build_class_map(root / "other.tsv", names=root / "names.txt").save(root / "other_classes.json")
    return {"root": root, "vocab": root / "vocab.tsv", "classes": root / "classes.json"}


def write_checkpoint(
    run: Path, vocab: Path, bias: list[float], name: str = "vit_tiny", *, before_pos_interp: bool = False
) -> Path:
    """A stage-0 DeepSpeed checkpoint as the trainer lays it out (mp_rank_00_model_states.pt with
    the module state and the client state, complete.json), of vit_tiny with a zero head weight and
    ``bias``: every image gets logits = bias. ``before_pos_interp``: as written before that option
    (no model.pos_interp in the config; a table for SIZE, resampled bicubically)."""
    from catlip.models import CatLIPModel, vit_config

    torch.manual_seed(0)
    old = {"pos_interp": "bicubic"} if before_pos_interp else {}
    model = CatLIPModel(vit_config(name, image_size=SIZE, **old), len(bias))
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor(bias))
    tag = run / "checkpoints" / "step_00000007"
    tag.mkdir(parents=True)
    config = {"model": {"name": name, "image_size": SIZE, "objective": "catlip"}}
    if not before_pos_interp:
        config["model"]["pos_interp"] = None  # the preset's, as the trainer records it
    vocab_meta = {"vocab": str(vocab), "vocab_size": len(bias), "vocab_sha256": vocab_sha256(vocab)}
    states = {
        "module": model.state_dict(),
        "ds_config": {"zero_optimization": {"stage": 0}},
        "config": config,
        "vocab": vocab_meta,
        "step": 7,
    }
    torch.save(states, tag / "mp_rank_00_model_states.pt")
    files = {p.name: p.stat().st_size for p in tag.iterdir()}
    (tag / "complete.json").write_text(json.dumps({"step": 7, "files": files}))
    (run / "checkpoints" / "latest").write_text(tag.name)
    return run


def solid(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (48, 40)) -> Path:
    Image.new("RGB", size, rgb).save(path)
    return path


@pytest.mark.parametrize("name", ["vit_tiny", "corenet_vit_tiny"], ids=["patch_stem", "conv_stem"])
def test_predict_from_export_and_checkpoint(setup, tmp_path: Path, capsys, name: str) -> None:
    """Scores = max logit over a class's rows: motor vehicle = max(0.5, 3) = 3 beats cat (2); a
    mean over rows (1.75) would not. From the checkpoint directory and from its safetensors export,
    for both stems."""
    from safetensors import safe_open

    from engine.checkpoint import export_fp32
    from engine.cli import main

    run = write_checkpoint(tmp_path / "run", setup["vocab"], [-1.0, 2.0, 0.5, 3.0], name)
    export = export_fp32(run, tmp_path / "model.safetensors")
    with safe_open(str(export), "pt") as f:
        assert json.loads(f.metadata()["vocab"])["vocab_sha256"] == vocab_sha256(setup["vocab"])
    png = solid(tmp_path / "a.png", (200, 30, 30))
    jpg = tmp_path / "b.jpg"
    Image.new("RGB", (70, 50), (10, 90, 200)).save(jpg, quality=90)
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    for ckpt in (export, run):
        argv = ["predict", "--checkpoint", str(ckpt), "--classes", str(setup["classes"]), "--top", "3"]
        assert main([*argv, str(png), str(text), str(tmp_path / "missing.png"), str(jpg)]) == 0
        out, err = capsys.readouterr()
        lines = [ln for ln in out.splitlines() if not ln.startswith("[20")]  # DeepSpeed's log lines
        assert lines[0] == f"{png}:" and lines[4] == f"{jpg}:"
        ranked = [ln.split()[1:3] for ln in lines[1:4]]
        assert ranked == [
            ["motor", "vehicle"],
            ["cat", f"{torch.sigmoid(torch.tensor(2.0)):.4f}"],
            ["dog", "0.2689"],
        ]
        assert "(logit +3.000)" in lines[1] and f"{torch.sigmoid(torch.tensor(3.0)):.4f}" in lines[1]
        assert f"{text}: skipped: not an image" in err and "missing.png: skipped: no such file" in err
        assert "2 image(s) classified, 2 skipped" in err and "Traceback" not in err
    # nothing readable: nonzero exit, still no traceback
    assert main([*argv, str(text)]) == 1
    assert "skipped" in capsys.readouterr().err


def test_bad_inputs_are_errors_naming_them(setup, tmp_path: Path, capsys) -> None:
    from engine.cli import main

    run = write_checkpoint(tmp_path / "run", setup["vocab"], [0.0, 0.0, 0.0, 0.0])
    img = str(solid(tmp_path / "a.png", (1, 2, 3)))
    other = setup["root"] / "other_classes.json"
    assert main(["predict", "--checkpoint", str(run), "--classes", str(other), img]) == 2
    err = capsys.readouterr().err
    assert "vocabulary mismatch" in err and str(run) in err and str(other) in err
    assert vocab_sha256(setup["vocab"]) in err and vocab_sha256(setup["root"] / "other.tsv") in err
    assert "Traceback" not in err
    for argv, said in [
        (
            ["--checkpoint", str(tmp_path / "nope"), "--classes", str(setup["classes"])],
            "no such file or directory",
        ),
        (["--checkpoint", str(run), "--classes", str(tmp_path / "nope.json")], "nope.json: no such file"),
        (["--checkpoint", img, "--classes", str(setup["classes"])], "not a safetensors file"),
        (["--checkpoint", str(tmp_path), "--classes", str(setup["classes"])], "not a usable checkpoint"),
    ]:
        assert main(["evaluate", *argv, "--data", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err, err
    assert main(["evaluate", "--checkpoint", str(run), "--classes", str(setup["classes"]), "--data", str(tmp_path / "x")]) == 2  # fmt: skip
    assert "--data" in capsys.readouterr().err


def test_a_checkpoint_from_before_pos_interp_keeps_its_table(setup, tmp_path: Path, capsys) -> None:
    """corenet_vit_* checkpoints written before model.pos_interp hold a table for their image size
    (5 rows at 32 px: a 2 x 2 grid) and were resampled bicubically: they load and run as they did."""
    from engine.checkpoint import read_model
    from engine.cli import main
    from engine.zeroshot import load_model

    run = write_checkpoint(
        tmp_path / "run", setup["vocab"], [0.0, 2.0, 0.5, 3.0], "corenet_vit_tiny", before_pos_interp=True
    )
    model = load_model(*read_model(run), run)
    assert model.cfg.pos_interp == "bicubic" and model.encoder.pos_embed.shape == (1, 5, 96)
    img = str(solid(tmp_path / "a.png", (1, 2, 3)))
    assert main(["predict", "--checkpoint", str(run), "--classes", str(setup["classes"]), img]) == 0
    assert "motor vehicle" in capsys.readouterr().out


def test_weights_not_floating_point_or_not_finite_are_refused(setup, tmp_path: Path, capsys) -> None:
    """predict, evaluate, export and model.init_from refuse int8 and NaN/inf weights, naming the file
    and the tensor, instead of casting them or scoring with them (exit 0 with meaningless scores)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from catlip.convert import InteropError, load_encoder_state
    from engine.checkpoint import export_fp32
    from engine.cli import main
    from engine.config import ConfigError
    from engine.pretrained import load_pretrained

    good = export_fp32(write_checkpoint(tmp_path / "good", setup["vocab"], [0.0] * 4), tmp_path / "good.st")
    state, img = load_file(str(good)), str(solid(tmp_path / "a.png", (1, 2, 3)))
    with safe_open(str(good), "pt") as f:  # the export's metadata (config, vocabulary), kept
        meta = f.metadata()
    int8 = tmp_path / "int8.safetensors"  # every tensor int8, as a quantised file would hold
    save_file({k: v.round().to(torch.int8) for k, v in state.items()}, str(int8), metadata=meta)
    nan = write_checkpoint(tmp_path / "nan", setup["vocab"], [0.0, float("nan"), 0.0, 0.0])
    inf = tmp_path / "inf.safetensors"
    save_file(
        {**state, "encoder.pos_embed": state["encoder.pos_embed"].clone().fill_(float("inf"))},
        str(inf),
        metadata=meta,
    )
    cases = [
        (int8, r"int8.safetensors: refused: tensor (encoder|head)\.\S+ is int8, not floating point"),
        (nan, r"mp_rank_00_model_states.pt: refused: tensor head.bias has 1 NaN or infinite values among 4"),
        (
            inf,
            r"inf.safetensors: refused: tensor encoder.pos_embed has 1632 NaN or infinite values among 1632",
        ),
    ]
    for ckpt, said in cases:
        for argv in (
            ["predict", "--checkpoint", str(ckpt), "--classes", str(setup["classes"]), img],
            [
                "evaluate",
                "--checkpoint",
                str(ckpt),
                "--classes",
                str(setup["classes"]),
                "--data",
                str(tmp_path),
            ],
        ):
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert re.search(said, err) and "Traceback" not in err, err
        with pytest.raises(ConfigError, match=said):  # model.init_from
            load_pretrained(ckpt)
    assert main(["export", str(nan), "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert (
        "mp_rank_00_model_states.pt: refused: tensor head.bias has 1 NaN" in err and "Traceback" not in err
    ), err
    assert not (tmp_path / "x.safetensors").exists()
    # foreign weights (catlip.convert): refused before any cast
    with pytest.raises(InteropError, match=cases[0][1]):
        load_encoder_state(int8)


class MeanColour(nn.Module):
    """logits (B, 4) = the mean of the normalised R, G, B and -B channels: scores known by hand."""

    def __init__(self) -> None:
        from catlip.models import ViTConfig

        super().__init__()
        self.cfg = ViTConfig(image_size=SIZE, patch_size=8, width=8, depth=1, heads=1)
        self.register_buffer("w", torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, -1]]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        assert images.shape[1:] == (3, SIZE, SIZE)
        return images.mean(dim=(2, 3)) @ self.w.T  # (B, 4)


COLOURS = {  # image -> (RGB, classes)
    "a": ((220, 30, 60), ["dog"]),
    "b": ((40, 210, 90), ["cat"]),
    "c": ((90, 50, 230), ["dog", "motor vehicle"]),
    "d": ((150, 140, 20), ["cat"]),
}


def normalised(rgb: tuple[int, int, int]) -> np.ndarray:
    return (np.array(rgb) / 255.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)


def test_evaluate_multilabel_map_by_hand(setup, tmp_path: Path, capsys) -> None:
    """A YOLO pack of 4 solid-colour images, scored by MeanColour: dog = R, cat = G, motor vehicle =
    max(B, -B) = |B| (normalised). dog ranks a, d, c, b with a, c positive: AP (1 + 2/3) / 2; cat
    ranks b, d first: AP 1; motor vehicle ranks c first (|B| 1.79): AP 1. Chance: positive rates
    2/4, 2/4, 1/4."""
    from engine.packing import ClassSet, YoloSource, pack
    from engine.zeroshot import ZeroShotClassifier, evaluate

    yolo = tmp_path / "yolo"
    (yolo / "images" / "val").mkdir(parents=True)
    (yolo / "labels" / "val").mkdir(parents=True)
    (yolo / "names.yaml").write_text("names:\n" + "".join(f"  {i}: {n}\n" for i, n in enumerate(NAMES)))
    for key, (rgb, classes) in COLOURS.items():
        solid(yolo / "images" / "val" / f"{key}.png", rgb)
        lines = "".join(f"{NAMES.index(c)} 0.5 0.5 0.2 0.2\n" for c in classes)
        (yolo / "labels" / "val" / f"{key}.txt").write_text(lines)
    pack(YoloSource(yolo, "val", ClassSet.load(setup["classes"])), tmp_path / "pack", progress=False)
    scores = {k: normalised(rgb) for k, (rgb, _) in COLOURS.items()}
    assert [k for k in sorted(scores, key=lambda k: -scores[k][0])] == ["a", "d", "c", "b"]
    assert [k for k in sorted(scores, key=lambda k: -abs(scores[k][2]))][0] == "c"
    classifier = ZeroShotClassifier(MeanColour(), ClassMap.load(setup["classes"]))
    result = evaluate(classifier, tmp_path / "pack", batch_size=3, progress=False)  # 2 batches, 1 padded
    assert result.images == 4 and result.classes == 3 and result.multi_label and result.topk is None
    assert result.mean_ap == pytest.approx(((1 + 2 / 3) / 2 + 1 + 1) / 3, abs=1e-6)
    assert result.chance == pytest.approx((0.5 + 0.5 + 0.25) / 3, abs=1e-6)
    assert result.summary() == "mAP 94.44% over 3 classes (4 images); chance 41.67%"

    # the CLI's last line, from a real checkpoint
    from engine.cli import main

    run = write_checkpoint(tmp_path / "run", setup["vocab"], [0.0, 1.0, 2.0, 3.0])
    argv = [
        "evaluate",
        "--checkpoint",
        str(run),
        "--classes",
        str(setup["classes"]),
        "--data",
        str(tmp_path / "pack"),
    ]
    assert main([*argv, "--no-progress"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]  # after any DeepSpeed log line
    assert re.fullmatch(r"mAP \d+\.\d\d% over 3 classes \(4 images\); chance 41\.67%", last), last


def test_evaluate_single_label_topk(setup, tmp_path: Path) -> None:
    """An ImageFolder pack: top-1 by hand. a (dog): R 1.42 is the top score; b (cat): G 1.40; c
    (motor vehicle): |B| 1.79; d (cat): |B| 1.20 beats G 0.35, wrong. Top-1 3/4; top-5 (of 3) 1."""
    from engine.packing import ClassSet, ImageFolderSource, pack
    from engine.zeroshot import ZeroShotClassifier, evaluate

    folder = {"a": "dog", "b": "cat", "c": "motor vehicle", "d": "cat"}
    for key, (rgb, _) in COLOURS.items():
        (tmp_path / "imgs" / folder[key]).mkdir(parents=True, exist_ok=True)
        solid(tmp_path / "imgs" / folder[key] / f"{key}.png", rgb)
    (tmp_path / "imgs" / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    pack(
        ImageFolderSource(tmp_path / "imgs", ClassSet.load(setup["classes"])),
        tmp_path / "pack",
        progress=False,
    )
    top1 = [
        np.argmax(normalised(rgb) * [1, 1, 0] + [0, 0, abs(normalised(rgb)[2])])
        for rgb, _ in COLOURS.values()
    ]
    assert top1 == [0, 1, 2, 2]
    classifier = ZeroShotClassifier(MeanColour(), ClassMap.load(setup["classes"]))
    result = evaluate(classifier, tmp_path / "pack", batch_size=8, progress=False)
    assert not result.multi_label and result.images == 4
    assert result.topk == {1: 0.75, 5: 1.0}
    assert result.summary().startswith("mAP ") and result.summary().endswith("; top-1 75.00%, top-5 100.00%")


def test_predict_transform_is_the_loaders(setup, tmp_path: Path) -> None:
    """``predict``'s transform gives the pixels the trainer's eval loader gives for the same file
    (textured images, downscaled: the resize filter and the crop show)."""
    from engine.data import class_pack_loader
    from engine.packing import ClassSet, ImageFolderSource, pack
    from engine.zeroshot import ImageTransform

    rng = np.random.default_rng(0)
    (tmp_path / "imgs" / "dog").mkdir(parents=True)
    files = {}
    for key, (h, w), ext in [("wide", (45, 77), "jpg"), ("tall", (90, 51), "png")]:
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        files[key] = tmp_path / "imgs" / "dog" / f"{key}.{ext}"
        Image.fromarray(pixels).save(files[key], **({"quality": 95} if ext == "jpg" else {}))
    pack(
        ImageFolderSource(tmp_path / "imgs", ClassSet.load(setup["classes"])),
        tmp_path / "pack",
        progress=False,
    )
    loader, _ = class_pack_loader(tmp_path / "pack", 2, image_size=SIZE, device="cpu")
    batch = next(iter(loader))
    transform = ImageTransform(SIZE, batch_size=2)
    assert sorted(batch["key"]) == ["dog_tall", "dog_wide"]  # ROOT/dog/tall.png -> key dog_tall
    mine = transform([files[k.removeprefix("dog_")].read_bytes() for k in batch["key"]])
    assert mine.shape == (2, 3, SIZE, SIZE) and mine.dtype == torch.float32
    assert torch.equal(mine, batch["image"])


def _train_one_step(rank: int, tmp: str, vocab: str) -> str:
    """A real ZeRO-2 checkpoint from the trainer: vit_tiny at 32 px, the head as in
    :func:`write_checkpoint` (bias -1, 2, 0.5, 3), one optimizer step at a tiny learning rate."""
    from engine.config import from_dict
    from engine.train import Trainer

    def model():
        from catlip.models import CatLIPModel, vit_config

        m = CatLIPModel(vit_config("vit_tiny", image_size=SIZE), len(VOCAB))
        with torch.no_grad():
            m.head.weight.zero_()
            m.head.bias.copy_(torch.tensor([-1.0, 2.0, 0.5, 3.0]))
        return m

    cfg = from_dict(
        {
            "model": {"name": "vit_tiny", "image_size": SIZE},
            "data": {"batch_size": 2},
            "optim": {"lr": 1e-4, "warmup_steps": 0},
            "run": {"out_dir": tmp, "steps": 1, "zero_stage": 2, "precision": "fp32", "ckpt_every": 1},
        }
    )
    labels = torch.tensor([[0, -1], [1, 3]])
    batches = [{"image": torch.randn(2, 3, SIZE, SIZE), "labels": labels}]

    class Loader:
        pos = 0

        def __len__(self):
            return 1

        def __iter__(self):
            yield from batches

        def state_dict(self):
            return {}

    meta = {"vocab": vocab, "vocab_size": len(VOCAB), "vocab_sha256": vocab_sha256(vocab), "labeler": LABELER}
    trainer = Trainer(cfg, model_fn=model, train_loader=Loader(), dataset_meta=meta)
    trainer.fit()
    path = trainer.save()
    trainer.close()
    return str(path)


LABELER = {"name": "catlip-2", "pos_filter": True, "senses_sha256": "5e" * 32}


@pytest.mark.distributed
def test_predict_from_a_trainer_checkpoint(setup, tmp_path: Path, capsys) -> None:
    """The run folder of a real (ZeRO-2, partitioned) trainer checkpoint: model from its config,
    vocabulary identity from its client state, the ranking of the hand-set head."""
    from dist_utils import run_ranks

    from engine.cli import main

    run_ranks(_train_one_step, world=1, tmp=str(tmp_path / "run"), vocab=str(setup["vocab"]))
    image = solid(tmp_path / "a.png", (90, 120, 30))
    argv = ["predict", "--checkpoint", str(tmp_path / "run"), "--classes", str(setup["classes"]), str(image)]
    assert main(argv) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("   ")]
    assert [ln.split()[1] for ln in lines] == ["motor", "cat", "dog"]
    assert main([*argv[:4], str(setup["root"] / "other_classes.json"), str(image)]) == 2
    assert "vocabulary mismatch" in capsys.readouterr().err
    # the export carries the vocabulary's identity and its labeler, as the checkpoint does
    from safetensors import safe_open

    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "m.safetensors")]) == 0
    with safe_open(tmp_path / "m.safetensors", "pt") as f:
        vocab = json.loads(f.metadata()["vocab"])
    assert vocab["labeler"] == LABELER and vocab["vocab_sha256"] == vocab_sha256(setup["vocab"])


def test_predict_gives_each_batch_its_own_images(tmp_path: Path, nltk_ready: None) -> None:
    """Batches after the first are scored on their own images (a pipelined DALI run would hand
    each batch the previous one's): scores with batches of 2 and of 1 equal those of one batch."""
    from tiny_catlip import write_checkpoint as tiny_checkpoint
    from tiny_catlip import write_vocab

    from catlip.classes import build_class_map
    from engine.zeroshot import ZeroShotClassifier, predict

    vocab = write_vocab(tmp_path / "vocab.tsv")
    run = tiny_checkpoint(tmp_path / "run", vocab)
    (tmp_path / "names.txt").write_text("dog\ncat\ncar\nbus\nperson\n")
    build_class_map(vocab, names=tmp_path / "names.txt").save(tmp_path / "classes.json")
    classifier = ZeroShotClassifier.from_files(run, tmp_path / "classes.json", device="cpu")
    rgb = [(200, 30, 30), (10, 200, 40), (20, 40, 220), (250, 250, 250), (5, 5, 5)]
    images = []
    for i, c in enumerate(rgb):
        im = Image.fromarray(np.random.RandomState(i).randint(0, 255, (50 + 7 * i, 70, 3), dtype=np.uint8))
        im.paste(c, (0, 0, 30, 30))
        images.append(im.save(tmp_path / f"{i}.png") or tmp_path / f"{i}.png")
    whole, _ = predict(classifier, images, top=5, batch_size=8)
    for batch_size in (2, 1):
        done, _ = predict(classifier, images, top=5, batch_size=batch_size)
        assert [[n for n, _, _ in p.top] for p in done] == [[n for n, _, _ in p.top] for p in whole]
        got = torch.tensor([[s for _, _, s in p.top] for p in done])  # (N, 5) logits
        torch.testing.assert_close(got, torch.tensor([[s for _, _, s in p.top] for p in whole]))
    assert len({tuple(n for n, _, _ in p.top) for p in whole}) > 1  # the images do score differently
