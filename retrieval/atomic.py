"""Build a directory somewhere else and swap it in at the end, so readers never see half of one
and an interrupted build leaves the previous directory as it was.

The one way wenzhi writes a directory that others read: indexes (retrieval), pretraining shards,
model folders, fine-tuned heads and their tries. It lives in the lowest layer that writes one.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


def swap_into_place(ready: str | Path, out: str | Path) -> Path:
    """Rename the finished directory `ready` to `out`. One already at `out` is renamed aside first
    and removed once the new one is in place. For a staging directory of a fixed name that must
    survive a kill (a resumable job); `AtomicDirectory` makes a fresh one."""
    out = Path(out)
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.rename(out, old)
    os.rename(ready, out)
    shutil.rmtree(old, ignore_errors=True)
    return out


class AtomicDirectory:
    """A fresh temporary directory `path` beside `out`; `commit()` puts it in place of `out`,
    `abort()` removes it and leaves `out` untouched. For writers that stay open across calls
    (the shard writer); `atomic_directory` is the same as a `with` block.

    Linux has no atomic exchange of two non-empty directories through os.rename, so the old
    directory is first renamed aside and removed after the new one is in place (`swap_into_place`);
    the gap between the two renames is two system calls long."""

    def __init__(self, out: str | Path):
        self.out = Path(out).resolve()
        self.out.parent.mkdir(parents=True, exist_ok=True)
        for stale in self.out.parent.glob(f".{self.out.name}.building-*"):
            # Left by a build that was killed (SIGKILL skips abort()); never a live one unless two
            # builds of the same directory run at once, which is not supported.
            shutil.rmtree(stale, ignore_errors=True)
        self.path = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.building-", dir=self.out.parent))

    def commit(self) -> Path:
        return swap_into_place(self.path, self.out)

    def abort(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(out: str | Path):
    """Yield a fresh temporary directory beside `out`; on success it replaces `out`. On an
    exception (or KeyboardInterrupt) it is removed and `out` is untouched."""
    staging = AtomicDirectory(out)
    try:
        yield staging.path
    except BaseException:
        staging.abort()
        raise
    staging.commit()
