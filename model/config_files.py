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
