"""Typed configuration: the loader. TOML files -> frozen dataclasses, with dotted overrides.

Each section is a frozen dataclass that lives beside the code it configures (`TrainConfig` in
train.py, `GPTConfig` in models/gpt.py, ...), with a docstring per field and checks in
`__post_init__` (through `check`). A run config is read from TOML, then `--set section.key=value`
overrides are applied; unknown keys and values of the wrong type are errors that name the key and
suggest the nearest valid one. `save_config` writes the resolved config back as TOML so every output
folder records exactly what produced it.

A union of dataclasses that each have a `kind` field (the model section) is read by its `kind`.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
import types
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from lmforge.errors import LmforgeError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRESETS_DIR = Path(__file__).parent / "configs"


# ----------------------------------------------------------------------------------------------------
# Loading, overriding, saving


def check(ok: bool, key: str, message: str) -> None:
    """Raise the one-line error of a config value that fails its section's check."""
    if not ok:
        raise LmforgeError(f"config key '{key}' {message}")


def check_ranges(cfg: Any, section: str, positive: str = "", non_negative: str = "", fraction: str = "") -> None:
    """The range checks of a section's numeric fields (space-separated names): > 0, >= 0, in [0, 1)."""
    for names, ok, rule in ((positive, lambda v: v > 0, "> 0"), (non_negative, lambda v: v >= 0, ">= 0"),
                            (fraction, lambda v: 0 <= v < 1, "in [0, 1)")):
        for name in names.split():
            value = getattr(cfg, name)
            check(ok(value), f"{section}.{name}", f"must be {rule}, got {value!r}")


def resolve_preset(name_or_path: str) -> Path:
    """A config path, or the name of a shipped preset (`gpt-tiny`, `bert-tiny`, ...)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = PRESETS_DIR / f"{path.stem}.toml"
    if preset.is_file() and (path.suffix in ("", ".toml")):
        return preset
    names = sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))
    hint = difflib.get_close_matches(path.stem, names, n=1)
    raise LmforgeError(
        f"config {name_or_path} not found: give a TOML path or a preset name"
        + (f" (did you mean '{hint[0]}'?)" if hint else f" ({', '.join(names)})"))


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise LmforgeError(f"config file {path} not found") from None
    except tomllib.TOMLDecodeError as e:
        raise LmforgeError(f"{path}: invalid TOML: {e}") from None


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply `section.key=value` strings to a raw dict; values are parsed as TOML, else taken as text."""
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise LmforgeError(f"--set {item!r}: expected section.key=value, e.g. --set train.max_steps=100")
        *sections, leaf = key.strip().split(".")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        node = raw
        for s in sections:
            node = node.setdefault(s, {})
            if not isinstance(node, dict):
                raise LmforgeError(f"--set {item!r}: '{s}' is not a section")
        node[leaf] = value
    return raw


def from_dict(cls: type, raw: dict[str, Any], where: str = "", source: str = "config") -> Any:
    """Build dataclass `cls` from a raw dict, checking every key and type."""
    if not isinstance(raw, dict):
        raise LmforgeError(f"{source}: '{where or cls.__name__}' must be a table of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls) if f.init]
    for key in raw:
        if key not in names:
            full = f"{where}.{key}" if where else key
            hint = difflib.get_close_matches(key, names, n=1)
            prefix = f"{where}." if where else ""
            valid = f"did you mean '{prefix}{hint[0]}'?" if hint else f"valid keys: {', '.join(names)}"
            raise LmforgeError(f"{source}: unknown key '{full}'; {valid}")
    kwargs = {}
    defaults = {f.name: f.default_factory for f in fields(cls) if f.default_factory is not dataclasses.MISSING}
    for name in names:
        if name in raw:
            full = f"{where}.{name}" if where else name
            value = raw[name]
            if is_dataclass(hints[name]) and name in defaults and isinstance(value, dict):
                value = merge(to_dict(defaults[name]()), value)  # a partial section keeps the class's defaults
            kwargs[name] = _coerce(hints[name], value, full, source)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str, source: str) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        if all(is_dataclass(a) for a in args if a is not type(None)):
            return _tagged_section(args, value, key, source)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key, source)
            except LmforgeError:
                pass
        raise LmforgeError(f"{source}: '{key}' = {value!r} does not fit type {tp}")
    if is_dataclass(tp):
        return from_dict(tp, value, key, source)
    if origin is Literal:
        if value not in args:
            hint = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            extra = f"; did you mean '{hint[0]}'?" if hint else ""
            raise LmforgeError(f"{source}: '{key}' = {value!r} is not one of {', '.join(map(repr, args))}{extra}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or (args[-1] is not Ellipsis and len(value) != len(args)):
            raise LmforgeError(f"{source}: '{key}' must be a list of {len(args)} values, got {value!r}")
        inner = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
        return tuple(_coerce(t, v, key, source) for t, v in zip(inner, value))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise LmforgeError(f"{source}: '{key}' must be a list, got {value!r}")
        return [_coerce(args[0], v, key, source) for v in value]
    if tp is bool:
        if not isinstance(value, bool):
            raise LmforgeError(f"{source}: '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise LmforgeError(f"{source}: '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise LmforgeError(f"{source}: '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise LmforgeError(f"{source}: '{key}' must be a string, got {value!r}")
        return str(value)
    return value


def _kind_of(cls: type) -> str:
    return next(f.default for f in fields(cls) if f.name == "kind")


def _tagged_section(classes: tuple[type, ...], value: Any, key: str, source: str) -> Any:
    """A section read as whichever dataclass its `kind` names (the first one when it names none)."""
    if not isinstance(value, dict):
        raise LmforgeError(f"{source}: '{key}' must be a table with a 'kind' key")
    by_kind = {_kind_of(c): c for c in classes}
    kind = value.get("kind", next(iter(by_kind)))
    if kind not in by_kind:
        hint = difflib.get_close_matches(str(kind), list(by_kind), n=1)
        raise LmforgeError(f"{source}: '{key}.kind' = {kind!r} is not one of {', '.join(by_kind)}"
                           + (f"; did you mean '{hint[0]}'?" if hint else ""))
    return from_dict(by_kind[kind], value, key, source)


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                base: dict[str, Any] | None = None) -> Any:
    """Read `path` (a TOML file or preset name) into `cls`, applying `--set` overrides on top."""
    raw: dict[str, Any] = dict(base or {})
    source = "config"
    if path is not None:
        resolved = resolve_preset(str(path))
        raw = merge(raw, read_toml(resolved))
        source = str(path)
    raw = apply_overrides(raw, overrides)
    return from_dict(cls, raw, source=source if not overrides else f"{source} (with --set)")


def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """`b` on top of `a`, table by table."""
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        out[f.name] = to_dict(value) if is_dataclass(value) else (list(value) if isinstance(value, tuple) else value)
    return out


def dumps_toml(data: dict[str, Any]) -> str:
    """TOML text for a dict of scalars, lists and (nested) tables."""
    lines: list[str] = []

    def emit(table: dict[str, Any], prefix: str) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
        subtables = {k: v for k, v in table.items() if isinstance(v, dict)}
        if prefix and scalars:
            lines.append(f"[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"{k} = {_toml_value(v)}")
        if prefix and scalars:
            lines.append("")
        for k, v in subtables.items():
            emit(v, f"{prefix}.{k}" if prefix else k)

    emit(data, "")
    return "\n".join(lines).rstrip() + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if v is None:
        return '""'
    raise TypeError(f"cannot write {v!r} as TOML")


def save_config(cfg: Any, path: str | Path) -> None:
    from lmforge.atomic import write_text

    write_text(path, dumps_toml(to_dict(cfg)))
