"""The run configs that ship with the engine: ``configs/*.yaml`` in a checkout, the same files as
``engine/configs/*.yaml`` in an installed wheel (package data). ``catlip config list`` and
``catlip config show NAME`` read them, so an installed copy can start from a recipe:

    catlip config show catlip_vit_b16 > b16.yaml
    deepspeed --num_gpus 8 --module engine.train --config b16.yaml --set data.train=/data/shards
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_ENGINE = Path(__file__).resolve().parent
SEARCHED = (_ENGINE / "configs", _ENGINE.parent / "configs")  # installed wheel, then a checkout


class ConfigFileError(LookupError):
    """A config name that is not shipped (the message lists those that are)."""


@dataclass(frozen=True)
class ConfigFile:
    name: str  # the file's stem: catlip_vit_b16
    path: Path

    @property
    def summary(self) -> str:
        """What the recipe is: the file's first comment line, up to its first " (" or ": "."""
        for line in self.path.read_text().splitlines():
            if not line.startswith("#"):
                break
            text = line.lstrip("#").strip()
            if text:
                return re.split(r" \(|: ", text, maxsplit=1)[0].rstrip(".")
        return ""


def config_dir() -> Path:
    """The folder the shipped configs are read from (the wheel's, else the checkout's)."""
    for folder in SEARCHED:
        if folder.is_dir():
            return folder
    raise ConfigFileError(f"no shipped configs found (looked in {', '.join(map(str, SEARCHED))})")


def list_configs() -> list[ConfigFile]:
    """Every shipped config, by name."""
    return [ConfigFile(p.stem, p) for p in sorted(config_dir().glob("*.yaml"))]


def find_config(name: str) -> ConfigFile:
    """The shipped config ``name`` (with or without ``.yaml``)."""
    stem = name.removesuffix(".yaml")
    for config in list_configs():
        if config.name == stem:
            return config
    names = ", ".join(c.name for c in list_configs())
    raise ConfigFileError(f"no shipped config named {name!r}; there are: {names}")
