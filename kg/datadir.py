"""Where the shared data lives: `--data-dir`, else `$WENZHI_DATA`, else `../shared/data` of the
working directory. Never a path inside the installed package: an installed wenzhi has no data of
its own, and a missing directory is a clear error (`data_path`)."""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DATA_DIR = "../shared/data"


class DataMissingError(FileNotFoundError):
    """A data file the command needs is not where the data directory says it is."""


def data_dir() -> Path:
    """The configured data directory (it may not exist; `data_path` says what is missing)."""
    configured = os.environ.get("WENZHI_DATA")
    if configured:
        return Path(configured).expanduser().resolve()
    return (Path.cwd() / DEFAULT_DATA_DIR).resolve()


def data_path(relative: str) -> Path:
    """The path of `relative` inside the data directory, or a clear error naming what to put where."""
    root = data_dir()
    path = root / relative
    if not path.exists():
        hint = (
            f"expected {relative!r} under the data directory {root}"
            if root.is_dir()
            else f"the data directory {root} does not exist"
        )
        raise DataMissingError(
            f"missing data: {hint}. Point --data-dir or WENZHI_DATA at a directory laid out like "
            f"../shared/data (see its README.md), or put the file at {path}."
        )
    return path
