"""Resume on another world size: a run of 2 gloo ranks continued on 1, then on 2 again, for ZeRO
stages 0-3, and 0 in bf16 (engine/reshard.py, engine/data/reshard.py). After each reshard the
weights, Adam moments and step, EMA, LR schedule position and DeepSpeed's step counters equal
those the ranks held when they saved (each side gathered whole through DeepSpeed's own accessors,
not through the files), the global batch is kept by the accumulation, the loss goes on, and the
repeats and skips the data reshard reports match the sample keys the ranks trained on (a
per-sample log through the loader's ``keys=True``). Two tests of two stages each, ~25 s each on 2
CPU cores; ZeRO-0 in bf16; ZeRO-3 with parameters kept whole; ZeRO-2 with multi-scale batches
(the draws of every step too), ~30 s."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from dist_utils import run_ranks

from engine.data.reshard import Reshard

pytestmark = pytest.mark.distributed

V, B, STEPS = 50, 2, 8  # vocabulary, per-rank batch on 2 ranks, the run's steps
SAMPLES = 16  # one epoch: 4 steps on 2 ranks


def _shards(root: Path, photos: Path) -> Path:
    from engine.packing import ShardWriter

    out = root / "shards"
    writer = ShardWriter(out, SAMPLES)
    for i, image in enumerate(sorted(photos.glob("*.jpg"))[:SAMPLES]):
        writer.write(f"s{i:02d}", [("jpg", image.read_bytes()), ("lbl", np.asarray([1, 3], "<i4").tobytes())])
    writer.close()
    (out / "dataset.json").write_text(
        json.dumps({"samples": SAMPLES, "vocab_size": V, "shard_names": writer.names})
    )
    return out


def _model():
    from catlip.models import CatLIPModel, ViTConfig

    torch.manual_seed(0)
    return CatLIPModel(
        ViTConfig(image_size=16, patch_size=8, width=32, depth=2, heads=2), V, loss_impl="torch"
    )


class _KeyLog:
    """The loader, recording (epoch, sample keys) of every batch it yields: the per-sample log."""

    def __init__(self, loader) -> None:
        self.loader, self.seen, self.sides = loader, [], []

    def __iter__(self):
        for batch in self.loader:
            self.seen.append((self.loader._epoch, batch["key"]))
            self.sides.append(tuple(batch["image"].shape[-2:]))
            yield batch

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name):  # state_dict, load_state_dict, load_resharded, counters
        return getattr(self.loader, name)


def _whole(trainer) -> dict:
    """What the ranks hold, gathered whole by parameter name through DeepSpeed's accessors (ZeRO
    1-3) or the torch optimizer (stage 0; in bf16 its fp32 masters): weights, moments, step, EMA,
    schedule, counters."""
    import torch.distributed as dist
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    from engine.reshard import link_moments

    engine, out = trainer.engine, {"fp32": {}, "exp_avg": {}, "exp_avg_sq": {}, "ema": {}}
    # ZeRO-0 bf16: DeepSpeed's FP16_UnfusedOptimizer, an fp32 master per bf16 parameter
    masters = {}
    if trainer.cfg.parallel.zero_stage == 0 and hasattr(engine.optimizer, "fp32_groups"):
        for lows, highs in zip(engine.optimizer.fp16_groups, engine.optimizer.fp32_groups, strict=True):
            masters.update((id(low), high) for low, high in zip(lows, highs, strict=True))
    for name, p in engine.module.named_parameters():
        if trainer.cfg.parallel.zero_stage == 0:
            master = masters.get(id(p), p)
            state = engine.optimizer.optimizer.state[master] if masters else engine.optimizer.state[p]
            out["fp32"][name], out["exp_avg"][name] = master.detach().clone(), state["exp_avg"].clone()
            out["exp_avg_sq"][name], step = state["exp_avg_sq"].clone(), state["step"]
        else:
            link_moments(engine.optimizer)  # DeepSpeed's accessors find ZeRO 1-2's moments after this
            out["fp32"][name] = safe_get_full_fp32_param(p).clone()
            for key in ("exp_avg", "exp_avg_sq"):
                out[key][name] = safe_get_full_optimizer_state(p, key).clone()
            step = next(iter(engine.optimizer.optimizer.state.values()))["step"]
        ema = trainer.ema[name]
        if hasattr(p, "ds_tensor"):  # ZeRO-3: each rank holds its partition of the EMA
            parts = [None] * dist.get_world_size()
            dist.all_gather_object(parts, ema)
            ema = torch.cat(parts)[: p.ds_numel].view(p.ds_shape)
        out["ema"][name] = ema.clone()
    out["step"] = float(step)
    out["schedule"] = (trainer.scheduler.last_epoch, trainer.scheduler.get_last_lr())
    out["counters"] = (engine.global_steps, engine.global_samples, engine.skipped_steps)
    out["grad_accum"] = engine.gradient_accumulation_steps()
    return out


def _leg(
    rank: int,
    tmp: str,
    shards: str,
    stages: list[int],
    until: int,
    persistence: int,
    multiscale: dict | None = None,
    precision: str = "fp32",
) -> str:
    """One run on this world size for each stage: resume (if a checkpoint is there), then train to
    ``until`` and save. What the rank saw is written to a file (more than a pipe holds), its path
    returned. ``multiscale``: data.multiscale; ``precision``: parallel.precision."""
    from engine.config import from_dict
    from engine.data import make_loader
    from engine.multiscale import from_config
    from engine.train import Trainer

    world, results = int(os.environ["WORLD_SIZE"]), {}
    for stage in stages:
        cfg = from_dict(
            {
                "model": {"name": "vit_tiny", "image_size": 16},
                "data": {"batch_size": B, "train": shards, "multiscale": multiscale},
                # lr, min_lr and warmup written for a global batch of 8, scaled to the run's 4: a
                # resume on another world size keeps the rates of the global batch it keeps
                "optim": {
                    "lr": 1e-2,
                    "min_lr": 2e-5,
                    "warmup_steps": 1,
                    "ema_decay": 0.9,
                    "reference_batch": 8,
                    "lr_scaling": "linear",
                },
                "parallel": {
                    "zero_stage": stage,
                    "precision": precision,
                    "persistence_threshold": persistence,
                },
                "checkpoint": {"every": 0, "keep": 3},  # the tests read every leg's checkpoint
                "run": {"out_dir": f"{tmp}/z{stage}", "steps": STEPS, "log_every": 1, "resume": "auto"},
            }
        )
        loader = _KeyLog(
            make_loader(
                shards, B, rank=rank, world_size=world, device="cpu", image_size=16, num_threads=1,
                shuffle_buffer=1, keys=True, multiscale=from_config(cfg, 16, 8),
            )
        )  # fmt: skip
        lines: list[str] = []
        trainer = Trainer(
            cfg, model_fn=_model, train_loader=loader, dataset_meta={"vocab_size": V}, log=lines.append
        )
        resumed = trainer.resume()
        after = _whole(trainer) if resumed else None
        history = trainer.fit(steps=until)
        before = _whole(trainer)
        trainer.close()
        results[stage] = {
            "after_resume": after, "at_save": before, "losses": [e.loss for e in history], "lines": lines,
            "seen": loader.seen, "sides": loader.sides, "start": history[0].step - 1,
        }  # fmt: skip
    path = f"{tmp}/leg{until}_rank{rank}.pt"
    torch.save(results, path)
    return path


def _same(a: dict, b: dict, what: str) -> None:
    for key in ("fp32", "exp_avg", "exp_avg_sq", "ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{what}: {key} of {name} differs"
    for key in ("step", "schedule", "counters"):
        assert a[key] == b[key], f"{what}: {key} {a[key]} != {b[key]}"


def _counts(before: list, after: list, epoch: int) -> tuple[int, int]:
    """(repeated, skipped) samples of ``epoch`` from the keys every rank trained on, before and after."""
    seen = Counter(k for ranks in (*before, *after) for e, keys in ranks for k in keys if e == epoch)
    return sum(n - 1 for n in seen.values()), SAMPLES - len(seen)


def _reported(lines: list[str]) -> tuple[int, int]:
    found = [re.search(r"(\d+) samples repeated and (\d+) skipped", line) for line in lines]
    (match,) = [m for m in found if m]
    return int(match.group(1)), int(match.group(2))


def _two_one_two(
    tmp_path: Path,
    photos: Path,
    stages: list[int],
    persistence: int = 0,
    precision: str = "fp32",
    jump: float = 2,
) -> dict:
    """2 -> 1 -> 2 ranks; ``persistence``: ZeRO-3's threshold under which parameters stay whole
    (0: every parameter partitioned); ``precision``: parallel.precision; ``jump``: the loss change
    at a resume allowed, in the first leg's largest step-to-step change."""
    shards = str(_shards(tmp_path, photos))
    legs = [
        [
            torch.load(path)
            for path in run_ranks(
                _leg,
                world=w,
                tmp=str(tmp_path),
                shards=shards,
                stages=stages,
                until=u,
                persistence=persistence,
                precision=precision,
            )
        ]
        for w, u in ((2, 3), (1, 5), (2, STEPS))
    ]
    measured = {}
    for stage in stages:
        a, b, c = ([rank[stage] for rank in leg] for leg in legs)
        # model, optimizer, EMA, schedule and step counters carry over whole, on every new rank
        for new in b:
            _same(a[0]["at_save"], new["after_resume"], f"ZeRO-{stage} 2 -> 1")
        for new in c:
            _same(b[0]["at_save"], new["after_resume"], f"ZeRO-{stage} 1 -> 2")
        assert a[0]["after_resume"] is None and b[0]["start"] == 3 and c[0]["start"] == 5
        # the global batch is kept by the accumulation, said in one line
        assert (
            a[0]["at_save"]["grad_accum"],
            b[0]["at_save"]["grad_accum"],
            c[0]["at_save"]["grad_accum"],
        ) == (1, 2, 1)
        assert (
            "resume: 2 ranks -> 1 rank; global batch 4 kept: per-rank batch 2 -> 2, accumulation 1 -> 2"
            in b[0]["lines"]
        )
        assert (
            "resume: 1 rank -> 2 ranks; global batch 4 kept: per-rank batch 2 -> 2, accumulation 2 -> 1"
            in c[0]["lines"]
        )
        # the loss goes on: no jump beyond the run's own step-to-step spread
        losses = a[0]["losses"] + b[0]["losses"] + c[0]["losses"]
        spread = max(abs(x - y) for x, y in zip(a[0]["losses"], a[0]["losses"][1:], strict=False))
        for i in (3, 5):
            assert abs(losses[i] - losses[i - 1]) <= jump * spread, (stage, losses)
        # the repeats and skips reported equal those of the per-sample log
        measured[stage] = (_reported(b[0]["lines"]), _reported(c[0]["lines"]))
        print(
            *(line for line in b[0]["lines"] + c[0]["lines"] if line.startswith("resume")), losses, sep="\n"
        )
        assert _reported(b[0]["lines"]) == _counts([r["seen"] for r in a], [r["seen"] for r in b], epoch=0)
        assert _reported(c[0]["lines"]) == _counts([r["seen"] for r in b], [r["seen"] for r in c], epoch=1)
    print(measured)
    return measured


def test_resume_two_one_two_ranks_zero_0_and_3(tmp_path: Path, shared_data: Path) -> None:
    measured = _two_one_two(tmp_path, shared_data / "coco_photos", [0, 3])
    assert measured == {0: ((2, 2), (2, 2)), 3: ((2, 2), (2, 2))}


def test_resume_two_one_two_ranks_zero_3_with_whole_parameters(tmp_path: Path, shared_data: Path) -> None:
    # the tiny model's parameters are all under the default threshold: kept whole on every rank
    measured = _two_one_two(tmp_path, shared_data / "coco_photos", [3], persistence=100_000)
    assert measured == {3: ((2, 2), (2, 2))}


def test_resume_two_one_two_ranks_zero_0_bf16(tmp_path: Path, shared_data: Path) -> None:
    # ZeRO-0 in bf16: DeepSpeed 0.19 wraps the optimizer in its FP16_Optimizer (bf16 weights, fp32
    # masters kept whole in the model-states file, no per-rank optimizer files), so it loads as
    # stage 0 does on any world size
    # (an uninterrupted bf16 run drops 0.51 at step 3, where the warmup ends, against 0.22 before)
    measured = _two_one_two(tmp_path, shared_data / "coco_photos", [0], precision="bf16", jump=3)
    assert not list(tmp_path.glob("z0/checkpoints/*/*_optim_states.pt"))
    assert measured == {0: ((2, 2), (2, 2))}


def test_resume_two_one_two_ranks_zero_1_and_2(tmp_path: Path, shared_data: Path) -> None:
    measured = _two_one_two(tmp_path, shared_data / "coco_photos", [1, 2])
    assert measured == {1: ((2, 2), (2, 2)), 2: ((2, 2), (2, 2))}


def test_reshard_plan_counts_in_reader_order() -> None:
    # 2 ranks had read 3 chunks of 2 of their 8 samples: [0, 6) and [8, 14); 1 rank skips 6 chunks
    plan = Reshard.plan(
        samples=16, epoch=0, old_world=2, old_position=3, old_chunk=2, new_world=1, new_chunk=2, new_chunks=8,
        shuffle_buffer=1,
    )  # fmt: skip
    assert (plan.consumed, plan.skipped_ahead, plan.repeated, plan.skipped) == (12, 12, 2, 2)
    assert (plan.resume_epoch, plan.resume_chunk) == (0, 6)
    # an epoch whose batches were all taken: the next one starts whole, nothing repeated or skipped
    done = Reshard.plan(
        samples=16, epoch=0, old_world=2, old_position=4, old_chunk=2, new_world=1, new_chunk=2, new_chunks=8,
        shuffle_buffer=1,
    )  # fmt: skip
    assert (done.resume_epoch, done.resume_chunk, done.repeated, done.skipped) == (1, 0, 0, 0)
    # 17 samples on 3 ranks (ranges of 5, 6, 6; drop_last keeps 4 of each) -> 2 ranks: 8 is
    # skipped (the second new range skips 8 and 9), 5, 6, 11 and 12 repeated
    odd = Reshard.plan(
        samples=17, epoch=2, old_world=3, old_position=1, old_chunk=2, new_world=2, new_chunk=2, new_chunks=4,
        shuffle_buffer=1024,
    )  # fmt: skip
    assert (odd.consumed, odd.skipped_ahead, odd.repeated, odd.skipped) == (6, 4, 4, 1)
    assert "within 5120 with a shuffle buffer of 1024" in odd.line()


def test_keep_global_batch_or_refuse() -> None:
    from engine.config import ConfigError
    from engine.reshard import keep_global_batch

    saved = {"data": {"batch_size": 4}, "optim": {"grad_accum": 1}}
    assert keep_global_batch(saved, 4, 2, 1)[0] == 2
    assert keep_global_batch(saved, 2, 2, 4)[0] == 1  # an explicit per-rank batch that keeps it
    with pytest.raises(ConfigError, match=r"cannot keep the global batch 8 .* on 3 ranks"):
        keep_global_batch(saved, 4, 2, 3)


def _loader(shards: Path, rank: int, world: int, **options):
    from engine.data import make_loader

    options = {
        "device": "cpu",
        "image_size": 16,
        "num_threads": 1,
        "shuffle_buffer": 1,
        "keys": True,
        **options,
    }
    return make_loader(shards, B, rank=rank, world_size=world, **options)


def test_a_resharded_loader_resumes_on_its_own_world_size(tmp_path: Path, shared_data: Path) -> None:
    # 1 rank takes 2 batches of epoch 1; 2 ranks go on (their ranges moved one for epoch 1); then an
    # ordinary same-world resume of one of them takes the batches the uninterrupted one takes
    shards = _shards(tmp_path, shared_data / "coco_photos")
    one = _loader(shards, 0, 1)
    batches = iter(_epochs(one))
    for _ in range(8 + 2):
        next(batches)
    state = one.state_dict()
    for rank in (0, 1):
        new = _loader(shards, rank, 2)
        new.load_resharded([state])
        taken = iter(_epochs(new))
        assert next(taken)["key"] == [f"s{i:02d}" for i in ((10, 11) if rank == 0 else (2, 3))]
        again = _loader(shards, rank, 2)
        again.load_state_dict(new.state_dict())
        rest = [b["key"] for _, b in zip(range(5), _epochs(again), strict=False)]
        assert rest == [b["key"] for _, b in zip(range(5), taken, strict=False)]  # into epoch 2 as well


def _epochs(loader):
    while True:
        yield from loader


def test_a_loader_that_cannot_reshard_is_refused(tmp_path: Path, shared_data: Path) -> None:
    from engine.checkpoint import CheckpointError
    from engine.data import TensorLoader, make_loader
    from engine.multiscale import MultiScale, Scale
    from engine.reshard import load_engine_state, resume

    shards = _shards(tmp_path, shared_data / "coco_photos")
    # a loader setup that differs (the seed, multi-scale on or off), and multi-scale sizes whose
    # global batches another per-rank batch does not keep: refused naming what
    states = [_loader(shards, r, 2, seed=1).state_dict() for r in (0, 1)]
    with pytest.raises(ValueError, match=r"different loader setup \(seed: saved 1, now 0\)"):
        _loader(shards, 0, 1).load_resharded(states)
    multiscale = {"multiscale": MultiScale((Scale(8, 8, 8), Scale(16, 16, B)), seed=0)}
    states = [_loader(shards, r, 2, **multiscale).state_dict() for r in (0, 1)]
    with pytest.raises(ValueError, match=r"different loader setup \(multiscale: saved \{'table'"):
        _loader(shards, 0, 1).load_resharded(states)
    other = MultiScale((Scale(8, 8, 12), Scale(16, 16, 2 * B)), seed=0)  # data.batch_size 2 -> 4
    with pytest.raises(ValueError, match=r"every size cannot be kept from 2 to 1 .*batch_size 2 -> 4"):
        make_loader(shards, 2 * B, device="cpu", image_size=16, multiscale=other).load_resharded(states)
    # a train loader without load_resharded (in-memory batches): refused before anything is loaded
    tag = tmp_path / "step_00000003"
    tag.mkdir()
    for rank in (0, 1):
        (tag / f"extra_rank{rank}.json").write_text(json.dumps({"data": {"pos": 3}, "rng": {}}))

    class Checkpointer:  # what resume reads of engine.checkpoint.Checkpointer; engine None: never reached
        engine, rank, world_size, log = None, 0, 1, print

    with pytest.raises(
        CheckpointError, match=r"written by 2 ranks, this run has 1, and its train loader \(TensorLoader\)"
    ):
        resume(Checkpointer(), tag, TensorLoader([]))
    # ZeRO-0 with DeepSpeed's BF16_Optimizer (not this engine's setup) keeps optimizer states per rank: refused
    torch.save({"ds_config": {"zero_optimization": {"stage": 0}}}, tag / "mp_rank_00_model_states.pt")
    for rank in (0, 1):
        (tag / f"bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"")
    with pytest.raises(
        CheckpointError, match="ZeRO-0 with DeepSpeed's bf16 optimizer, whose states are partitioned"
    ):
        load_engine_state(None, tag)


MULTISCALE = {
    "min": 8,
    "max": 24,
    "step": 8,
    "scales": 3,
    "multiple": 1,
}  # a rank's batch: 8 px 8, 16 px 2, 24 px 1


def _rest_of_epoch(shards: str, tag: Path, epoch: int) -> list[str]:
    """The keys the ranks that saved ``tag`` would still have trained of ``epoch`` (a resume on the
    same world size is exact: tests/test_multiscale.py)."""
    from engine.multiscale import MultiScale, Scale

    keys = []
    metas = sorted(tag.glob("extra_rank*.json"))
    assert metas, f"{tag} is not there"
    for meta in metas:
        state = json.loads(meta.read_text())["data"]
        ident = state["multiscale"]
        scales = MultiScale(tuple(Scale(*row) for row in ident["table"]), ident["seed"], ident["group"])
        loader = _loader(Path(shards), state["rank"], state["world_size"], multiscale=scales)
        loader.load_state_dict(state)
        if loader.epoch == epoch:  # the epoch is not done
            keys += [k for batch in loader for k in batch["key"]]
    return keys


def test_resume_two_one_two_ranks_multiscale(tmp_path: Path, shared_data: Path) -> None:
    from engine.multiscale import MultiScale, MultiScaleConfig

    shards = str(_shards(tmp_path, shared_data / "coco_photos"))
    legs = [
        [
            torch.load(path)[2]
            for path in run_ranks(
                _leg, world=w, tmp=str(tmp_path), shards=shards, stages=[2], until=u, persistence=0,
                multiscale=MULTISCALE,
            )
        ]
        for w, u in ((2, 3), (1, 5), (2, STEPS))
    ]  # fmt: skip
    a, b, c = legs
    for new in b:
        _same(a[0]["at_save"], new["after_resume"], "multi-scale ZeRO-2 2 -> 1")
    for new in c:
        _same(b[0]["at_save"], new["after_resume"], "multi-scale ZeRO-2 1 -> 2")
    assert [leg[0]["at_save"]["grad_accum"] for leg in legs] == [1, 2, 1]
    # the draws are those of the step on any world size: batch i of a leg that starts at step s
    # with accumulation g is draw s + i // g, at the per-rank batch of the table (global batch kept)
    draws = MultiScale(MultiScaleConfig(**MULTISCALE).table(16, B), seed=0)
    for leg, accum in zip(legs, (1, 2, 1), strict=True):
        for rank in leg:
            expected = [draws.draw(rank["start"] + i // accum) for i in range(len(rank["sides"]))]
            assert rank["sides"] == [(d.height, d.width) for d in expected]
            assert [len(keys) for _, keys in rank["seen"]] == [d.batch for d in expected]
    assert len({side for rank in a + b + c for side in rank["sides"]}) == 3  # every size was drawn
    # the loss goes on: no jump beyond the run's own step-to-step spread
    losses = a[0]["losses"] + b[0]["losses"] + c[0]["losses"]
    spread = max(abs(x - y) for x, y in zip(a[0]["losses"], a[0]["losses"][1:], strict=False))
    for i in (3, 5):
        assert abs(losses[i] - losses[i - 1]) <= 2 * spread, losses
    print(*(line for line in b[0]["lines"] + c[0]["lines"] if line.startswith("resume")), losses, sep="\n")
    # 2 -> 1 in epoch 1: the counts reported are those of the keys trained, against the keys the
    # 2 ranks would have trained of that epoch had they gone on (the draws that still fit)
    (line,) = [x for x in b[0]["lines"] if "re-sharded" in x]
    epoch = int(re.search(r"data epoch (\d+)", line).group(1))
    tags = tmp_path / "z2" / "checkpoints"
    before = [k for rank in a for e, keys in rank["seen"] for k in keys if e == epoch]
    after = [k for rank in b for e, keys in rank["seen"] for k in keys if e == epoch]
    after += _rest_of_epoch(shards, tags / "step_00000005", epoch)
    trained = set(before) | set(_rest_of_epoch(shards, tags / "step_00000003", epoch))
    seen = Counter(before + after)
    assert _reported(b[0]["lines"]) == (sum(n - 1 for n in seen.values()), len(trained - set(seen)))
    assert _reported(b[0]["lines"]) == (3, 5)
    # 1 -> 2 where the 1 rank's next draw (8 px, 16 samples) no longer fits its epoch: the next starts
    # whole on the 2 ranks, nothing repeated or skipped
    assert "12 of 16 samples consumed, the new ranks skip 0; 0 samples repeated and 0 skipped" in " ".join(
        c[0]["lines"]
    )
    assert _rest_of_epoch(shards, tags / "step_00000005", epoch) == []
    assert {e for rank in c for e, _ in rank["seen"]} == {epoch + 1, epoch + 2}
    assert sorted(k for rank in c for e, keys in rank["seen"] for k in keys if e == epoch + 1) == [
        f"s{i:02d}" for i in range(SAMPLES)
    ]
