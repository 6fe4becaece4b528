"""JSON and YAML as the engine reads the files users hand it: every failure one line naming the
file, and no input that costs more than its own size.

- JSON nested deeper than Python's recursion limit (~1,000 levels; no file of this engine comes
  near) raises ``RecursionError`` inside ``json``; here it is an error naming the file.
- YAML anchors and aliases are refused: ten lines of ``&a``/``*a`` expand to 10^9 items (a
  "billion laughs"), which hangs whatever walks or prints the value. Run configs and class-name
  lists have no use for them. Deep nesting is an error naming the file, as for JSON.

Each reader takes the error class to raise, so a caller's own error type (and its one-line
handling in the CLI) is kept.
"""

from __future__ import annotations

import json
import reprlib
from pathlib import Path
from typing import Any

import yaml

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 60
_repr.maxlevel, _repr.maxlist, _repr.maxdict, _repr.maxtuple = 3, 6, 6, 6


def shown(value: Any) -> str:
    """``repr(value)`` cut to a few items and ~80 characters, for messages (a value from a file may
    be large)."""
    return _repr.repr(value)


def load_json(source: Path | str, error: type[Exception] = ValueError, *, text: str | None = None) -> Any:
    """The JSON of file ``source`` (or of ``text``, named ``source`` in errors); ``error`` for text
    that is not JSON or is nested too deeply (``OSError`` and ``UnicodeDecodeError`` pass)."""
    if text is None:
        text = Path(source).read_text(encoding="utf-8-sig")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{source}:{err.lineno}:{err.colno}: invalid JSON ({err.msg})") from None
    except RecursionError:
        raise error(
            f"{source}: JSON nested too deeply to read (over ~1,000 levels): not a file of this kind"
        ) from None


class _Refused(yaml.YAMLError):
    pass


class _PlainLoader(yaml.SafeLoader):
    """PyYAML's safe loader without anchors and aliases."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            mark = event.start_mark
            raise _Refused(
                f"line {mark.line + 1}: YAML anchors and aliases (&{event.anchor}, *{event.anchor}) are not "
                "read here (they can expand without bound): write the value out"
            )
        return super().compose_node(parent, index)


def load_yaml(text: str, source: str, error: type[Exception] = ValueError) -> Any:
    """The YAML document ``text`` (named ``source`` in errors); ``error`` with one line for YAML
    that does not parse, uses anchors or aliases, or is nested too deeply."""
    try:
        return yaml.load(text, Loader=_PlainLoader)  # noqa: S506 - a SafeLoader subclass
    except _Refused as err:
        raise error(f"{source}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise error(f"{source}{where}: invalid YAML ({problem})") from None
    except RecursionError:
        raise error(f"{source}: YAML nested too deeply to read (over ~1,000 levels)") from None
