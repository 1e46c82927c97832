"""YAML read with the line of every key, and a reader whose errors name file, line, key and fix."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from kbench.errors import KbenchError, did_you_mean


def key_lines(node: yaml.Node | None, prefix: str = "") -> dict[str, int]:
    """'model.heads' or 'runs[1].command' -> 1-based line, for every mapping key and list item."""
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
            lines[key] = key_node.start_mark.line + 1
            lines.update(key_lines(value_node, key))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            key = f"{prefix}[{index}]"
            lines[key] = item.start_mark.line + 1
            lines.update(key_lines(item, key))
    return lines


def read_yaml(path: Path, what: str = "Spec file", missing_hint: Callable[[Path], str] | None = None,
              example: str = "model_specs/tiny-llama.yaml") -> tuple[dict, dict[str, int]]:
    """The YAML mapping in ``path`` and ``key -> line``; KbenchError naming the file and line otherwise."""
    if not path.is_file():
        hint = missing_hint(path) if missing_hint else ""
        raise KbenchError(f"{what} {str(path)!r} does not exist.", f"Pass the path of a YAML file.{hint}")
    text = path.read_text()
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        context, context_mark = getattr(error, "context", None), getattr(error, "context_mark", None)
        if context and context_mark is not None and mark is not None and context_mark.line != mark.line:
            problem += f" ({context} started at line {context_mark.line + 1})"
        raise KbenchError(f"{path}{line}: invalid YAML: {problem}.",
                          "Fix the syntax at that line (indentation, a missing ':' or an unclosed bracket).") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise KbenchError(f"{path}: the spec must be a YAML mapping (model:, weights:, ...), got {type(data).__name__}.",
                          f"See {example} for the layout.")
    return data, (key_lines(node) if node is not None else {})


class Reader:
    """Validates one spec's sections, naming file, line, key and fix in every error."""

    def __init__(self, path: Path, lines: dict[str, int]):
        self.path = path
        self.lines = lines

    def where(self, key: str) -> str:
        parts = key.split(".")
        for end in range(len(parts), 0, -1):  # the nearest key that has a line
            line = self.lines.get(".".join(parts[:end]))
            if line is not None:
                return f"{self.path}:{line}: {key}"
        return f"{self.path}: {key}"

    def error(self, key: str, message: str, fix: str) -> KbenchError:
        return KbenchError(f"{self.where(key)}: {message}", fix)

    def mapping(self, value: Any, key: str, allowed: Iterable[str]) -> dict:
        """``value`` as a dict whose keys are all in ``allowed`` (closest match suggested)."""
        allowed = list(allowed)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(key, f"must be a mapping, got {describe(value)}.",
                             f"Write it as '{key.rsplit('.', 1)[-1]}:' followed by indented keys ({', '.join(allowed)}).")
        for name in value:
            if str(name) not in allowed:
                full = f"{key}.{name}" if key else str(name)
                hint = did_you_mean(str(name), allowed)
                raise self.error(full, "unknown key.", f"{hint}Keys allowed here: {', '.join(allowed)}.")
        return dict(value)

    def integer(self, section: dict, name: str, key: str, default: Any = ..., minimum: int = 1) -> int:
        value = self._required(section, name, key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be an integer, got {describe(value)}.", f"Write e.g. {key.rsplit('.', 1)[-1]}: 4096.")
        if value < minimum:
            raise self.error(key, f"must be >= {minimum}, got {value}.", f"Use a value of at least {minimum}.")
        return value

    def number(self, section: dict, name: str, key: str, default: Any = ..., minimum: float | None = None,
               maximum: float | None = None, positive: bool = False) -> float:
        value = self._required(section, name, key, default)
        if isinstance(value, str):
            try:  # YAML 1.1 reads "1e-5" (no dot) as a string
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.error(key, f"must be a number, got {describe(value)}.", f"Write e.g. {key.rsplit('.', 1)[-1]}: 1.0e-5.")
        if positive and value <= 0:
            raise self.error(key, f"must be > 0, got {value}.", "Use a positive number.")
        if minimum is not None and value < minimum or maximum is not None and value > maximum:
            raise self.error(key, f"must lie in [{minimum}, {maximum}], got {value}.", "Use a value in that range.")
        return float(value)

    def boolean(self, section: dict, name: str, key: str, default: Any = ...) -> bool:
        value = self._required(section, name, key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {describe(value)}.", f"Write {key.rsplit('.', 1)[-1]}: true.")
        return value

    def choice(self, section: dict, name: str, key: str, options: Iterable[str], default: Any = ...) -> str:
        value = self._required(section, name, key, default)
        options = list(options)
        if not isinstance(value, str) or value not in options:
            hint = did_you_mean(str(value), options)
            raise self.error(key, f"{value!r} is not one of {', '.join(options)}.", f"{hint}Use one of: {', '.join(options)}.")
        return value

    def integers(self, section: dict, name: str, key: str, default: Any = ...) -> tuple[int, ...]:
        value = self._required(section, name, key, default)
        values = value if isinstance(value, (list, tuple)) else [value]
        if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
            raise self.error(key, f"must be a positive integer or a list of them, got {describe(value)}.",
                             f"Write e.g. {key.rsplit('.', 1)[-1]}: [1, 8, 32].")
        return tuple(values)

    def _required(self, section: dict, name: str, key: str, default: Any) -> Any:
        if name in section and section[name] is not None:
            return section[name]
        if default is ...:
            raise self.error(key, "is required.", f"Add '{name}:' to that section.")
        return default


def describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) < 40 else text[:37] + '...'}"
