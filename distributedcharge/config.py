"""TOML configuration, validated on load.

A schema is a list of :class:`Field`, each naming a ``section.key``. Loading collects
every problem (not just the first) as ``FILE: KEY: what is wrong`` so an owner can fix a
file in one pass, and raises :class:`ConfigError` before any hardware is touched.
The file names its role with a top-level ``role = "car"`` or ``role = "wallunit"``;
``distributedcharge config check`` uses it to pick the schema.
"""

from __future__ import annotations

import importlib
import ipaddress
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

REQUIRED = object()

# Each role's config module, imported lazily like the CLI. It defines ``SCHEMA`` (a list of
# Field) and ``cross_check(config, source) -> list[str]`` for rules that span several keys.
SCHEMAS = {"car": "car.config", "wallunit": "wallunit.config"}

Check = Callable[[Any], "str | None"]


@dataclass(frozen=True)
class Field:
    key: str
    kind: type | tuple[type, ...]
    default: Any = REQUIRED
    check: Check | None = None
    doc: str = ""

    @property
    def section(self) -> str:
        return self.key.rpartition(".")[0]

    @property
    def name(self) -> str:
        return self.key.rpartition(".")[2]


class ConfigError(Exception):
    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


class Config(dict):
    """Section name -> {key: value}, with every default filled in."""

    def __getattr__(self, section: str) -> dict[str, Any]:
        try:
            return self[section]
        except KeyError:
            raise AttributeError(section) from None


def between(low: float | None = None, high: float | None = None) -> Check:
    def check(value: Any) -> str | None:
        if low is not None and value < low:
            return f"must be at least {low}, got {value}"
        if high is not None and value > high:
            return f"must be at most {high}, got {value}"
        return None

    return check


def one_of(*choices: Any) -> Check:
    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {', '.join(map(repr, choices))}, got {value!r}"

    return check


def ip_address(value: Any) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"not an IP address: {value!r}"
    return None


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "a table"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _type_ok(value: Any, kind: type | tuple[type, ...]) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool):
        return bool in kinds
    if isinstance(value, int) and float in kinds:
        return True
    return isinstance(value, kinds)


def validate(data: dict[str, Any], schema: list[Field], source: str) -> Config:
    problems: list[str] = []
    config = Config()
    known = {f.key for f in schema} | {"role"}
    sections = {f.section for f in schema}
    for field in schema:
        table: Any = data
        for part in field.section.split(".") if field.section else []:
            table = table.get(part, {}) if isinstance(table, dict) else {}
        present = isinstance(table, dict) and field.name in table
        if not present:
            if field.default is REQUIRED:
                problems.append(f"{source}: {field.key}: missing (required)")
                continue
            value = field.default
        else:
            value = table[field.name]
            if not _type_ok(value, field.kind):
                problems.append(f"{source}: {field.key}: must be {_kind_name(field.kind)}, got {value!r}")
                continue
            if field.check and (problem := field.check(value)):
                problems.append(f"{source}: {field.key}: {problem}")
                continue
            kinds = field.kind if isinstance(field.kind, tuple) else (field.kind,)
            if float in kinds and int not in kinds and isinstance(value, int):
                value = float(value)
        config.setdefault(field.section, {})[field.name] = value

    def walk(table: dict[str, Any], prefix: str) -> None:
        for key, value in table.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict) and dotted in sections:
                walk(value, dotted + ".")
            elif dotted not in known:
                problems.append(f"{source}: {dotted}: unknown key")

    walk(data, "")
    if problems:
        raise ConfigError(problems)
    return config


def parse_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except PermissionError:
        raise ConfigError([f"{path}: permission denied"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not valid UTF-8: {exc}"]) from None


def load(path: str | Path, role: str | None = None) -> tuple[str, Config]:
    """Parse and validate ``path``; ``role`` given means the file must be for that role."""
    data = parse_file(path)
    found = data.get("role")
    if found not in SCHEMAS:
        raise ConfigError([f"{path}: role: must be one of {', '.join(map(repr, SCHEMAS))}, got {found!r}"])
    if role is not None and found != role:
        raise ConfigError([f"{path}: role: this is a {found!r} config, expected {role!r}"])
    module = importlib.import_module(SCHEMAS[found])
    config = validate(data, module.SCHEMA, str(path))
    if problems := module.cross_check(config, str(path)):
        raise ConfigError(problems)
    return found, config
