"""The run config's sections, and the keys that moved to other sections: still read for one release,
each with one line naming its new key, in YAML files, ``--set`` and the configs saved in checkpoints."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from dist_utils import run_ranks

from engine.config import MOVED, ConfigError, TrainConfig, from_dict, load_config, with_new_keys

ROOT = Path(__file__).resolve().parents[1]


def _deprecated(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("deprecated:")]


def _old_names(saved: dict) -> dict:
    """A config dict as the engine wrote it before the keys moved."""
    old = {section: dict(values) for section, values in saved.items()}
    for was, now in MOVED.items():
        (section, key), (new_section, new_key) = was.split("."), now.split(".")
        old.setdefault(section, {})[key] = old[new_section].pop(new_key)
    return {section: values for section, values in old.items() if values}


def test_sections_by_concern_and_every_key_in_one_place():
    cfg = TrainConfig()
    assert [f.name for f in dataclasses.fields(cfg)] == [
        "model", "objective", "data", "optim", "parallel", "checkpoint", "run",
    ]  # fmt: skip
    keys = [
        f"{s.name}.{k.name}"
        for s in dataclasses.fields(cfg)
        for k in dataclasses.fields(getattr(cfg, s.name))
    ]
    assert len(keys) == len(set(keys)) and set(MOVED.values()) <= set(keys)
    assert not set(MOVED) & set(keys)  # an old name is no longer a key
    with pytest.raises(AttributeError):  # code still writing an old attribute fails loudly
        cfg.run.zero_stage = 3


def test_every_old_key_is_read_at_its_new_place_with_one_line(tmp_path: Path, capsys) -> None:
    defaults = TrainConfig()
    old: dict = {}
    for was, now in MOVED.items():
        section, key = now.split(".")
        old.setdefault(was.split(".")[0], {})[was.split(".")[1]] = getattr(getattr(defaults, section), key)
    old["run"]["zero_stage"], old["run"]["ckpt_every"], old["model"]["objective"] = 3, 7, "clip"
    path = tmp_path / "old.yaml"
    path.write_text(json.dumps(old))  # JSON is YAML
    cfg = load_config(path)
    lines = _deprecated(capsys.readouterr().err)
    assert lines == [
        f"deprecated: {was} is now {now} (in {path}; the old key is read until the next release)"
        for was, now in MOVED.items()
    ]
    assert (cfg.parallel.zero_stage, cfg.checkpoint.every, cfg.objective.name) == (3, 7, "clip")
    assert cfg.to_dict() == from_dict({**cfg.to_dict()}).to_dict()


def test_old_keys_in_set_and_which_spelling_wins(tmp_path: Path, capsys, monkeypatch) -> None:
    cfg = load_config(None, ["run.precision=fp32", "model.init_from=run/x", "run.steps=5"])
    assert (cfg.parallel.precision, cfg.objective.init_from, cfg.run.steps) == ("fp32", "run/x", 5)
    assert _deprecated(capsys.readouterr().err) == [
        "deprecated: run.precision is now parallel.precision (in --set; the old key is read until the next release)",
        "deprecated: model.init_from is now objective.init_from (in --set; the old key is read until the next release)",
    ]
    # --set overrides the file, whichever spelling either uses
    new, old = tmp_path / "new.yaml", tmp_path / "old.yaml"
    new.write_text("parallel:\n  zero_stage: 1\n")
    old.write_text("run:\n  zero_stage: 1\n")
    assert load_config(new, ["run.zero_stage=3"]).parallel.zero_stage == 3
    assert load_config(old, ["parallel.zero_stage=0"]).parallel.zero_stage == 0
    # the new spelling says nothing; one setting given twice in one place is refused
    capsys.readouterr()
    assert load_config(new, ["checkpoint.keep=4"]).checkpoint.keep == 4
    assert not _deprecated(capsys.readouterr().err)
    both = tmp_path / "both.yaml"
    both.write_text("run:\n  zero_stage: 1\nparallel:\n  zero_stage: 2\n")
    with pytest.raises(ConfigError, match="run.zero_stage and parallel.zero_stage are one setting"):
        load_config(both)
    # one line per job, not per rank: every rank reads the config
    monkeypatch.setenv("RANK", "1")
    assert load_config(None, ["run.zero_stage=3"]).parallel.zero_stage == 3
    assert not _deprecated(capsys.readouterr().err)


def test_errors_name_the_keys_as_the_config_spells_them():
    with pytest.raises(ConfigError, match=r"^parallel.zero_stage must be 0, 1, 2 or 3$"):
        from_dict({"parallel": {"zero_stage": 4}})
    with pytest.raises(ConfigError, match=r"^run.zero_stage must be 0, 1, 2 or 3$"):
        from_dict({"run": {"zero_stage": 4}})
    with pytest.raises(ConfigError, match="^objective.classifier_init synset needs objective.init_from "):
        from_dict({"objective": {"name": "finetune", "classifier_init": "synset"}})
    with pytest.raises(ConfigError, match="^model.classifier_init synset needs model.init_from "):
        from_dict({"model": {"objective": "finetune", "classifier_init": "synset"}})
    with pytest.raises(ConfigError, match="^parallel.compile with parallel.zero_stage 3"):
        from engine.parallel import apply_compile

        apply_compile(torch.nn.Linear(1, 1), from_dict({"parallel": {"zero_stage": 3}}))


def test_shipped_configs_use_the_new_keys(capsys):
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        load_config(path)
        assert not _deprecated(capsys.readouterr().err), path


def test_a_saved_config_with_the_old_keys_reads_as_the_new():
    saved = TrainConfig().to_dict()
    assert with_new_keys(_old_names(saved)) == {k: v for k, v in saved.items()}
    assert with_new_keys(saved) == saved


def test_zero_shot_reads_the_objective_of_an_export_saved_with_the_old_keys():
    from engine.zeroshot import ZeroShotError, load_model

    state = {"head.weight": torch.zeros(3, 8), "encoder.cls_token": torch.zeros(1, 1, 8)}
    for config in ({"model": {"name": "vit_tiny", "objective": "clip"}}, {"objective": {"name": "clip"}}):
        with pytest.raises(ZeroShotError, match="trained with objective 'clip'"):
            load_model(state, {"catlip_config": json.dumps(config)}, "x")


def _resume_a_checkpoint_saved_with_the_old_keys(rank: int, tmp: str) -> dict:
    from test_train import rank_loader, tiny_cfg, tiny_model

    from engine.train import Trainer

    class Before(Trainer):
        """The trainer as it saved checkpoints before the keys moved."""

        def save(self) -> Path:
            return self.checkpoints.save(
                self.step, loader=self.train_loader, ema=None, ema_layout=None,
                config=_old_names(self.cfg.to_dict()), vocab=self.vocab_identity(),
            )  # fmt: skip

    out: dict = {}
    loader = rank_loader(rank, 1, 6)
    t = Before(tiny_cfg(Path(tmp), 2, steps=4, ckpt_every=2), model_fn=tiny_model, train_loader=loader)
    t.fit(steps=2)
    t.close()
    cfg = tiny_cfg(Path(tmp), 2, steps=4, ckpt_every=2)
    cfg.parallel.sub_group_size = 5  # a moved key that cannot change on resume
    t = Trainer(cfg, model_fn=tiny_model, train_loader=rank_loader(rank, 1, 6))
    try:
        t.resume()
        out["refused"] = "resumed"
    except ConfigError as err:
        out["refused"] = str(err)
    t.close()
    cfg = tiny_cfg(Path(tmp), 2, steps=4, ckpt_every=2)
    cfg.optim.lr = 1e-2  # applied: the moved keys are compared under their new names, unchanged
    lines: list[str] = []
    t = Trainer(cfg, model_fn=tiny_model, train_loader=rank_loader(rank, 1, 6), log=lines.append)
    out["resumed"] = t.resume()
    out["changes"] = [line for line in lines if line.startswith("resume:")]
    out["steps"] = [e.step for e in t.fit()]
    t.close()
    return out


def test_a_checkpoint_saved_with_the_old_keys_resumes(tmp_path: Path) -> None:
    (out,) = run_ranks(_resume_a_checkpoint_saved_with_the_old_keys, world=1, tmp=str(tmp_path))
    assert out["resumed"] and out["steps"] == [3, 4], out
    assert out["changes"] == ["resume: optim.lr: 0.005 -> 0.01 (applied)"], out
    assert out["refused"].startswith("cannot resume with changed parallel.sub_group_size 1000000000 -> 5"), (
        out
    )
