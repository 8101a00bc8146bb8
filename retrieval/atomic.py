"""Build a directory somewhere else and swap it in at the end, so readers never see half of one
and an interrupted build leaves the previous directory as it was."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_directory(out: str | Path):
    """Yield a fresh temporary directory beside `out`; on success it replaces `out`.

    On an exception (or KeyboardInterrupt) the temporary directory is removed and `out` is
    untouched. Linux has no atomic exchange of two non-empty directories through os.rename, so
    the old directory is first renamed aside and removed after the new one is in place; the gap
    between the two renames is two system calls long."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.building-*"):
        # Left by a build that was killed (SIGKILL skips the cleanup below); never a live one
        # unless two builds of the same directory run at once, which is not supported.
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
