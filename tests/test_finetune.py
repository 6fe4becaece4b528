"""Transfer in the trainer: finetune and probe objectives, init_from, synset classifier init,
layer-wise lr decay, the loss chosen from the class pack, exact resume, the feature cache."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
from dist_utils import run_ranks

from engine.config import ConfigError, TrainConfig, from_dict
from engine.data import TensorLoader

V, C, B, SIZE = 40, 6, 4, 16  # pre-training vocabulary, downstream classes, batch, image size
VOCAB_SHA = hashlib.sha256(b"the pre-training vocabulary").hexdigest()


def cfg_for(tmp: Path, objective: str, **model) -> TrainConfig:
    return from_dict(
        {
            "model": {"objective": objective, "name": "vit_tiny", "image_size": SIZE, **model},
            "data": {"batch_size": B, "train": str(tmp / "pack")},
            "optim": {"lr": 5e-3, "min_lr": 1e-5, "warmup_steps": 2, "weight_decay": 0.05},
            "run": {
                "out_dir": str(tmp),
                "steps": 6,
                "zero_stage": 2,
                "precision": "fp32",
                "log_every": 1,
                "ckpt_every": 0,
            },
        }
    )


def batches(n: int, classes: int, multi_label: bool, seed: int = 7) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        labels = torch.full((B, 3), -1, dtype=torch.int64)
        for i in range(B):
            k = int(torch.randint(1, 4, (1,), generator=g)) if multi_label else 1
            labels[i, :k] = torch.randperm(classes, generator=g)[:k].sort().values
        out.append({"image": torch.randn(B, 3, SIZE, SIZE, generator=g), "labels": labels})
    return out


def write_class_map(tmp: Path, rows: list[list[int]], vocab_sha: str = VOCAB_SHA) -> dict:
    """A CLASSES.json (catlip-classes/1) and the class pack's dataset.json fields that name it."""
    classes = {
        "format": "catlip-classes/1",
        "vocab": {"path": "vocab.tsv", "size": V, "sha256": vocab_sha},
        "classes": [{"index": i, "name": f"class{i}", "rows": r} for i, r in enumerate(rows)],
        "unmapped": [],
    }
    path = tmp / "CLASSES.json"
    path.write_text(json.dumps(classes))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {
        "label_member": "cls",
        "num_classes": len(rows),
        "multi_label": True,
        "classes": {"path": str(path), "sha256": digest},
        "vocab_sha256": vocab_sha,
    }


def write_export(tmp: Path, vocab_sha: str = VOCAB_SHA) -> tuple[Path, dict[str, torch.Tensor]]:
    """A catlip safetensors export (as engine.checkpoint.export_fp32 writes) of a random model."""
    from safetensors.torch import save_file

    from catlip.models import CatLIPModel, vit_config

    torch.manual_seed(3)
    model = CatLIPModel(vit_config("vit_tiny", image_size=SIZE), V)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    meta = {
        "catlip_config": json.dumps({"model": {"name": "vit_tiny", "image_size": SIZE}}),
        "vocab": json.dumps({"vocab": "vocab.tsv", "vocab_size": V, "vocab_sha256": vocab_sha}),
        "step": "10",
        "weights": "trained",
    }
    path = tmp / "pre.safetensors"
    save_file(state, str(path), metadata=meta)
    return path, state


def build(tmp: Path, objective: str, meta: dict, **model):
    from catlip.models import vit_config
    from engine.objectives import make_objective

    cfg = cfg_for(tmp, objective, **model)
    obj = make_objective(cfg, vit_config(cfg.model.name, image_size=cfg.model.image_size))
    obj.bind(meta)
    torch.manual_seed(0)
    return obj, obj.build(meta.get("num_classes", C))


# ------------------------------------------------------------------------------ in one process
def test_synset_init_copies_head_rows_and_init_from_loads_the_backbone(tmp_path):
    path, state = write_export(tmp_path)
    rows = [[3], [5, 7], [0], [39, 1, 2], [10], [11]]
    meta = write_class_map(tmp_path, rows)
    _, model = build(tmp_path, "finetune", meta, init_from=str(path), classifier_init="synset")
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, state[f"encoder.{k}"]), k
    for c, r in enumerate(rows):  # one row: copied; several: their mean
        torch.testing.assert_close(model.head.weight[c], state["head.weight"][r].mean(0), rtol=0, atol=0)
        torch.testing.assert_close(model.head.bias[c], state["head.bias"][r].mean(), rtol=0, atol=0)
    assert torch.equal(model.head.weight[0], state["head.weight"][3])
    # zero and random leave the pre-trained head alone
    _, zero = build(tmp_path, "finetune", meta, init_from=str(path), classifier_init="zero")
    assert not zero.head.weight.any() and not zero.head.bias.any()
    _, rand = build(tmp_path, "finetune", meta, init_from=str(path), classifier_init="random")
    assert 0.01 < float(rand.head.weight.detach().std()) < 0.03 and not rand.head.bias.any()


def test_init_from_a_timm_export_and_a_foreign_state(tmp_path):
    interop = pytest.importorskip("catlip.convert")
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path, state = write_export(tmp_path)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    timm_file = interop.export_timm(state, meta, tmp_path / "timm.safetensors")
    rows = [[3], [5, 7], [0], [39, 1, 2], [10], [11]]
    classes = write_class_map(tmp_path, rows)
    _, model = build(tmp_path, "finetune", classes, init_from=str(timm_file), classifier_init="synset")
    for k, v in model.encoder.state_dict().items():
        torch.testing.assert_close(v, state[f"encoder.{k}"], rtol=0, atol=1e-6, msg=k)
    torch.testing.assert_close(model.head.weight[1], state["head.weight"][[5, 7]].mean(0), rtol=0, atol=1e-6)
    # timm's names without our metadata: a backbone, but no vocabulary to map synsets with
    save_file(load_file(str(timm_file)), str(tmp_path / "bare.safetensors"))
    _, model = build(tmp_path, "finetune", classes, init_from=str(tmp_path / "bare.safetensors"))
    torch.testing.assert_close(model.encoder.norm.weight, state["encoder.norm.weight"], rtol=0, atol=0)
    with pytest.raises(ConfigError, match="records no vocabulary hash"):
        build(
            tmp_path,
            "finetune",
            classes,
            init_from=str(tmp_path / "bare.safetensors"),
            classifier_init="synset",
        )


def test_vocabulary_and_class_map_hash_mismatches_are_clear_errors(tmp_path):
    path, _ = write_export(tmp_path)
    other = hashlib.sha256(b"another vocabulary").hexdigest()
    meta = write_class_map(tmp_path, [[1]] * C, vocab_sha=other)
    with pytest.raises(ConfigError, match=f"sha256 {VOCAB_SHA}.*sha256 {other}"):
        build(tmp_path, "finetune", meta, init_from=str(path), classifier_init="synset")
    meta = write_class_map(tmp_path, [[1]] * C)
    (tmp_path / "CLASSES.json").write_text(
        (tmp_path / "CLASSES.json").read_text() + "\n"
    )  # edited after packing
    with pytest.raises(ConfigError, match="the file changed since packing"):
        build(tmp_path, "finetune", meta, init_from=str(path), classifier_init="synset")
    with pytest.raises(ConfigError, match="synset needs model.init_from"):
        cfg_for(tmp_path, "finetune", classifier_init="synset")
    with pytest.raises(ConfigError, match="does not fit model.name vit_small with image_size 32"):
        build(tmp_path, "finetune", {"num_classes": C}, init_from=str(path), name="vit_small", image_size=32)


def test_init_from_another_resolution_resamples_the_position_embedding(tmp_path):
    path, state = write_export(tmp_path)  # 16 px: a 2 x 2 grid
    _, model = build(tmp_path, "finetune", {"num_classes": C}, init_from=str(path), image_size=32)
    pos = model.encoder.pos_embed.detach()  # (1, 1 + 4 x 4, W)
    assert pos.shape == (1, 17, 96) and torch.equal(pos[:, 0], state["encoder.pos_embed"][:, 0])
    assert torch.equal(model.encoder.blocks[1].mlp[0].weight, state["encoder.blocks.1.mlp.0.weight"])


@pytest.mark.filterwarnings("ignore:.*weights_only")
def test_init_from_a_corenet_checkpoint_needs_and_fills_the_conv_stem(tmp_path):
    pytest.importorskip("catlip.convert")
    from corenet_state import corenet_vit

    from catlip.convert import corenet_pos_embed

    src = corenet_vit(depth=4)
    path = tmp_path / "checkpoint_ema_best.pt"
    torch.save({"model_state_dict": src}, path)
    _, model = build(
        tmp_path, "finetune", {"num_classes": C}, init_from=str(path), name="corenet_vit_tiny", image_size=64
    )
    stem = model.encoder.patch_embed
    assert torch.equal(stem[0].weight, src["patch_emb.0.block.conv.weight"])
    assert torch.equal(stem[4].running_var, src["patch_emb.1.block.norm.running_var"])
    assert torch.equal(stem[6].bias, src["patch_emb.2.block.conv.bias"])
    # corenet's 196-row table, kept (pos_interp corenet); at 64 px: 16 patches, by corenet's own
    # interpolation of it
    table = src["pos_embed.pos_embed.pos_embed"]
    assert torch.equal(model.encoder.pos_embed[0, 1:].detach(), table[0, 0])
    with torch.no_grad():
        at_64 = model.encoder.pos_embed_for((4, 4))
    assert torch.equal(at_64[0, 1:], corenet_pos_embed(table, 16)[0])
    with pytest.raises(ConfigError, match="convolutional stem: use a corenet_vit_"):
        build(tmp_path, "finetune", {"num_classes": C}, init_from=str(path), name="vit_tiny", image_size=64)


@pytest.mark.filterwarnings("ignore:.*weights_only")
def test_init_from_a_corenet_training_checkpoint_takes_the_ema_weights(tmp_path):
    pytest.importorskip("catlip.convert")
    from corenet_state import corenet_vit

    weights, ema = corenet_vit(depth=4, seed=0), corenet_vit(depth=4, seed=1)
    path = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 3, "model_state_dict": weights, "ema_state_dict": ema}, path)
    obj, model = build(
        tmp_path, "finetune", {"num_classes": C}, init_from=str(path), name="corenet_vit_tiny", image_size=64
    )
    assert torch.equal(
        model.encoder.blocks[3].attn.qkv.weight, ema["transformer.3.pre_norm_mha.1.qkv_proj.weight"]
    )
    (line,) = [r for r in obj.report if "backbone from" in r]
    assert line.endswith("tensors; loaded ema_state_dict (the EMA weights), not model_state_dict)"), line


def test_probe_evaluation_reuses_the_held_out_features(tmp_path):
    obj, model = build(tmp_path, "probe", {"num_classes": C, "multi_label": True})
    model.eval()
    val = TensorLoader(batches(3, C, multi_label=True, seed=11))
    calls = []
    model.encoder.register_forward_hook(lambda *_: calls.append(1))
    plain = obj.evaluate(model, val, torch.device("cpu"), torch.float32)
    assert len(calls) == 3  # without the cache: the tower on every batch
    obj.cfg.data.cache_features = True
    first = obj.evaluate(model, val, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        model.head.weight.add_(0.1 * torch.randn_like(model.head.weight))  # the probe trains
    second = obj.evaluate(model, val, torch.device("cpu"), torch.float32)
    assert len(calls) == 6  # the cache was filled once, by the first evaluation
    assert first == plain and second != first  # the same numbers, then the trained head's


def test_loss_follows_multi_label_and_label_smoothing(tmp_path):
    import torch.nn.functional as F

    from kernels.reference import linear_bce_reference

    x = torch.randn(B, 96)
    for multi_label, smoothing in ((False, 0.1), (False, 0.0), (True, 0.0)):
        _, model = build(
            tmp_path, "finetune", {"num_classes": C, "multi_label": multi_label}, label_smoothing=smoothing
        )
        head = model.head
        labels = batches(1, C, multi_label)[0]["labels"]
        weight = torch.tensor([1.0, 0.0, 1.0, 1.0])
        got = model(x, labels, weight)  # features in: the tower is skipped
        if multi_label:
            want = linear_bce_reference(x, head.weight, head.bias, labels, sample_weight=weight)
        else:
            per = F.cross_entropy(head(x), labels[:, 0], reduction="none", label_smoothing=smoothing)
            want = (per * weight).sum() / B
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    # the smoothing value is the configured one: 0.1 of the target's mass spread over the C classes
    _, model = build(tmp_path, "finetune", {"num_classes": C, "multi_label": False}, label_smoothing=0.1)
    logp = model.head(x).log_softmax(1)
    target = torch.zeros(B, dtype=torch.int64)
    manual = -(0.9 * logp[:, 0] + 0.1 * logp.mean(1)).mean()
    torch.testing.assert_close(model(x, target.view(-1, 1)), manual, rtol=1e-6, atol=1e-6)


def test_layer_decay_param_groups():
    from catlip.models import ImageClassifier, vit_config
    from catlip.param_groups import layer_id, param_groups

    model = ImageClassifier(vit_config("vit_tiny", image_size=SIZE), C, multi_label=True)  # depth 4
    groups = param_groups(model, 0.05, layer_decay=0.5)
    scale = {}
    for g in groups:
        for p in g["params"]:
            scale[id(p)] = (g["lr_scale"], g["weight_decay"])
    named = dict(model.named_parameters())
    assert scale[id(named["encoder.pos_embed"])] == (0.5**5, 0.0)
    assert scale[id(named["encoder.patch_embed.weight"])] == (0.5**5, 0.05)
    assert scale[id(named["encoder.blocks.0.attn.qkv.weight"])] == (0.5**4, 0.05)
    assert scale[id(named["encoder.blocks.3.norm1.bias"])] == (0.5**1, 0.0)
    assert scale[id(named["encoder.norm.weight"])] == (1.0, 0.0)
    assert scale[id(named["head.weight"])] == (1.0, 0.05)
    assert len(scale) == len(named)  # every parameter in exactly one group
    assert layer_id("encoder.blocks.11.mlp.0.weight", 12) == 12 and layer_id("head.bias", 12) == 13
    # without decay: the two groups as before, frozen parameters left out
    model.encoder.requires_grad_(False)
    decay, no_decay = param_groups(model, 0.05)
    assert [p.shape for p in decay["params"]] == [(C, 96)] and len(no_decay["params"]) == 1


# ------------------------------------------------------------------------------ in the trainer
def _runs(rank: int, tmp: str) -> dict:
    from engine.checkpoint import consolidate
    from engine.parallel import lr_multiplier
    from engine.train import Trainer

    tmp = Path(tmp)
    out: dict = {}
    # a pre-training checkpoint (CatLIP over V synsets) to start from
    pre_cfg = cfg_for(tmp / "pre", "catlip")
    pre = Trainer(
        pre_cfg,
        vocab_size=V,
        train_loader=TensorLoader(batches(2, V, True)),
        dataset_meta={"vocab": "vocab.tsv", "vocab_size": V, "vocab_sha256": VOCAB_SHA},
    )
    pre.fit(steps=2)
    pre.close()
    pre_state, _ = consolidate(tmp / "pre")
    meta = write_class_map(tmp, [[i, i + 1] for i in range(C)])

    def trainer(
        name: str, objective: str, *, steps: int = 6, cache: bool = False, optim=None, **model
    ) -> Trainer:
        cfg = cfg_for(tmp / name, objective, init_from=str(tmp / "pre"), **model)
        cfg.run.steps, cfg.data.cache_features = steps, cache
        for k, v in (optim or {}).items():
            setattr(cfg.optim, k, v)
        return Trainer(cfg, vocab_size=C, train_loader=TensorLoader(batches(5, C, True)), dataset_meta=meta)

    # init_from a checkpoint directory: the backbone exactly
    t = trainer("ft_init", "finetune", classifier_init="synset")
    enc = t.engine.module.encoder.state_dict()
    out["init_exact"] = all(torch.equal(v, pre_state[f"encoder.{k}"]) for k, v in enc.items())
    w = pre_state["head.weight"]
    out["synset_row"] = torch.equal(t.engine.module.head.weight[2], (w[2] + w[3]) / 2)
    # layer-wise lr decay through DeepSpeed's optimizer and the schedule
    t.close()
    t = trainer("ft_ld", "finetune", optim={"layer_decay": 0.5})
    t.fit(steps=1)
    mult = lr_multiplier(1, 2, 6, 1e-5 / 5e-3)  # the schedule at the next step
    out["ld_lrs"] = sorted((g["lr_scale"], g["lr"] / (5e-3 * mult)) for g in t.engine.optimizer.param_groups)
    t.close()

    # probe: the backbone is untouched, the classifier trains; with and without the feature cache
    for cache in (False, True):
        cfg_name = f"probe{int(cache)}"
        t = trainer(cfg_name, "probe", cache=cache, classifier_init="synset")
        head0 = t.engine.module.head.weight.detach().clone()
        losses = [e.loss for e in t.fit()]
        enc = t.engine.module.encoder.state_dict()
        out[cfg_name] = {
            "backbone_same": all(torch.equal(v, pre_state[f"encoder.{k}"]) for k, v in enc.items()),
            "head_moved": not torch.equal(head0, t.engine.module.head.weight),
            "finite": all(math.isfinite(x) for x in losses),
            "frozen_grads": all(p.grad is None for p in t.engine.module.encoder.parameters()),
        }
        t.close()

    # exact resume: finetune (layer decay, EMA) and the cached probe
    def resume_case(name: str, objective: str, **kw) -> tuple[list, list]:
        def make(folder: str) -> Trainer:
            return trainer(folder, objective, steps=8, optim={"layer_decay": 0.7, "ema_decay": 0.9}, **kw)

        full = make(f"{name}_full")
        whole = [e.loss for e in full.fit()]
        full.close()
        first = make(name)
        first.fit(steps=3)
        first.close()
        again = make(name)
        assert again.resume() and again.step == 3
        rest = [e.loss for e in again.fit()]
        same_ema = all(torch.equal(full.ema[k], again.ema[k]) for k in full.ema)
        again.close()
        return whole[3:], rest, same_ema

    out["resume_ft"] = resume_case("rft", "finetune", classifier_init="random")
    out["resume_probe"] = resume_case("rpr", "probe", classifier_init="zero", cache=True)
    return out


@pytest.mark.distributed
def test_finetune_and_probe_in_the_trainer(tmp_path):
    (r,) = run_ranks(_runs, world=1, tmp=str(tmp_path))
    assert r["init_exact"] and r["synset_row"]
    for scale, ratio in r["ld_lrs"]:  # each group at lr x its layer's scale, under the schedule
        assert ratio == pytest.approx(scale, rel=1e-9)
    assert sorted({s for s, _ in r["ld_lrs"]}) == [0.5**k for k in range(5, -1, -1)]
    for case in ("probe0", "probe1"):
        assert r[case] == {"backbone_same": True, "head_moved": True, "finite": True, "frozen_grads": True}, (
            case
        )
    for case in ("resume_ft", "resume_probe"):
        uninterrupted, resumed, same_ema = r[case]
        assert len(resumed) == 5 and resumed == uninterrupted and same_ema, case  # bit-exact, fp32 on the CPU


def test_evaluation_map_or_top_k_next_to_chance(tmp_path):
    import numpy as np

    from engine.metrics import average_precision

    torch.manual_seed(11)
    scorer = torch.nn.Linear(SIZE * SIZE * 3, C)

    def model(images: torch.Tensor) -> torch.Tensor:
        return scorer(images.flatten(1))

    for multi_label in (True, False):
        obj, _ = build(tmp_path, "finetune", {"num_classes": C, "multi_label": multi_label})
        data = batches(3, C, multi_label, seed=5)
        data[-1]["valid"] = torch.tensor([True, True, False, False])  # the last batch's padding
        with torch.no_grad():
            got = obj.evaluate(model, data, torch.device("cpu"), torch.float32)
            scores = torch.cat([model(b["image"]) for b in data])[:-2]  # (10, C)
        labels = torch.cat([b["labels"] for b in data])[:-2]
        if multi_label:
            targets = np.zeros((10, C), dtype=bool)
            for i, row in enumerate(labels.tolist()):
                targets[i, [x for x in row if x >= 0]] = True
            m_ap, chance, classes = average_precision(scores.numpy(), targets)
            assert got["val_mAP"] == pytest.approx(m_ap) and got["chance_mAP"] == pytest.approx(chance)
            assert (got["classes"], got["images"]) == (classes, 10)
            assert "mAP" in obj.summary(got) and "chance" in obj.summary(got)
        else:
            rank = (scores > scores.gather(1, labels[:, :1])).sum(1)  # classes scored above the target
            assert got["val_top1"] == pytest.approx(float((rank < 1).float().mean()))
            assert got["val_top5"] == pytest.approx(float((rank < 5).float().mean()))
            assert (got["chance_top1"], got["chance_top5"], got["images"]) == (1 / C, 5 / C, 10)
            assert "top-1" in obj.summary(got) and "chance" in obj.summary(got)
