"""Config files by path or by name: `--config tiny` is the shipped model/configs/tiny.yaml, which
the wheel installs as package data, so a command works from any directory."""
from __future__ import annotations

from pathlib import Path

SHIPPED = Path(__file__).resolve().parent / "configs"
SUFFIXES = (".yaml", ".yml", ".json")


def shipped_names() -> list[str]:
    return sorted(p.stem for p in SHIPPED.iterdir() if p.suffix in SUFFIXES)


def find_config(name_or_path: str | Path) -> tuple[Path, Path]:
    """(the config file, the folder its relative paths start from). A file that exists is taken
    as it is (relative paths from its own folder, as before); a bare name is a shipped config,
    whose relative paths (output_dir, shards) start from the working directory."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path, path.parent
    if len(path.parts) == 1:
        for suffix in ("", *SUFFIXES):
            shipped = SHIPPED / f"{path.name}{suffix}"
            if shipped.is_file():
                return shipped, Path.cwd()
    raise FileNotFoundError(f"config {name_or_path} not found: not a file, nor a shipped config "
                            f"({', '.join(shipped_names())})")


def read_config(name_or_path: str | Path) -> tuple[dict, Path]:
    """(the config as a mapping, the folder its relative paths start from): JSON or YAML."""
    import json

    path, base_dir = find_config(name_or_path)
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        raw = yaml.safe_load(text)
    else:
        raw = json.loads(text)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return raw, base_dir


def config_fields(schema: type, config: str | Path | None, overrides: list[str], given: dict) -> dict:
    """A config's fields from, in rising order of precedence: the file `config` (if any), `--set`
    overrides, and the fields given as flags. A key the dataclass lacks is a ValueError naming
    the valid ones; the dataclass's defaults fill the rest when it is built."""
    raw = read_config(config)[0] if config else {}
    unknown = sorted(set(raw) - _field_names(schema))
    if unknown:
        raise ValueError(f"{config}: unknown keys {unknown}; valid: {', '.join(sorted(_field_names(schema)))}")
    return {**apply_overrides(raw, overrides, schema), **given}


def apply_overrides(raw: dict, overrides: list[str], schema: type, *, extra_keys: tuple[str, ...] = (),
                    dict_keys: dict[str, set[str]] | None = None) -> dict:
    """`raw` with each `--set a.b.c=value` applied (the value read as YAML: numbers, booleans,
    lists). Each key is checked against `schema`, the config's dataclass: a field of it (or one of
    `extra_keys`, shorthands its from_dict accepts), then along a dotted key a field of a nested
    dataclass, an index of a list of them, or a key of a mapping field (checked against
    `dict_keys[field]` where given). An unknown key is a ValueError naming the valid ones."""
    import yaml

    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ValueError(f"--set expects KEY=VALUE (KEY dotted for a nested field), got {item!r}")
        node, node_schema = raw, schema  # node_schema: the dataclass of node (of its items, for a list)
        for depth, part in enumerate(parts):
            where = ".".join(parts[:depth]) or "the config"
            child_schema = node_schema
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ValueError(f"--set {key}: {where} has {len(node)} items; no item {part!r}")
                part = int(part)
            elif node_schema is not None:
                valid = _field_names(node_schema) | (set(extra_keys) if depth == 0 else set())
                if part not in valid:
                    raise ValueError(f"--set {key}: unknown key {part!r} in {where}; valid: {', '.join(sorted(valid))}")
                child_schema = _nested_schema(node_schema, part)
            elif depth == 1 and parts[0] in (dict_keys or {}) and part not in dict_keys[parts[0]]:
                raise ValueError(f"--set {key}: unknown key {part!r} in {where}; valid: "
                                 f"{', '.join(sorted(dict_keys[parts[0]]))}")
            if depth == len(parts) - 1:
                node[part] = yaml.safe_load(text)
                break
            child = node[part] if isinstance(node, list) else node.get(part)
            if child is None:
                child = node[part] = [] if _is_list(node_schema, part) else {}
            if not isinstance(child, (dict, list)):
                raise ValueError(f"--set {key}: {'.'.join(parts[:depth + 1])} holds a value, not fields")
            node, node_schema = child, child_schema
    return raw


def _field_names(schema: type) -> set[str]:
    from dataclasses import fields

    return {f.name for f in fields(schema)}


def _is_list(schema: type | None, name) -> bool:
    import typing

    hint = typing.get_type_hints(schema).get(name) if schema is not None and isinstance(name, str) else None
    return hint is list or typing.get_origin(hint) is list


def _nested_schema(schema: type, name: str) -> type | None:
    """The dataclass a field holds (directly or as list items), from its annotation; else None."""
    import dataclasses
    import typing

    hint = typing.get_type_hints(schema).get(name)
    for candidate in (hint, *typing.get_args(hint)):
        if dataclasses.is_dataclass(candidate):
            return candidate
    return None
