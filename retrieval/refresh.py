"""A refresh hook: rebuild the dense index from a newer encoder checkpoint during pretraining."""
from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable

from .documents import Document
from .encoder import Encoder
from .faiss_index import Manifest, build_faiss_index

log = logging.getLogger(__name__)


class IndexRefresher:
    """Rebuilds a dense index from a newer encoder checkpoint, for pretraining (REALM refreshes
    its index asynchronously every few hundred steps).

        refresher = IndexRefresher(lambda: documents_for("entities", db=DB), "runs/dense", every_steps=500)
        ...in the training loop:  refresher.maybe_refresh(step, checkpoint_dir)

    Builds run one at a time in a background thread (or inline with background=False). A request
    arriving while one runs is kept and only the newest such checkpoint is built next. Readers
    see the old index until the new one is renamed into place; `on_built(manifest)` is called
    after each build (e.g. to reopen a FaissIndex)."""

    def __init__(self, docs_factory: Callable[[], Iterable[Document]], out: str | Path, index_string: str | None = None,
                 kind: str | None = None, every_steps: int = 500, background: bool = True,
                 encoder_factory: Callable[[Path], Encoder] | None = None,
                 on_built: Callable[[Manifest], None] | None = None, batch_size: int = 64):
        from .encoder import TransformersEncoder

        self.docs_factory, self.out, self.index_string, self.kind = docs_factory, Path(out), index_string, kind
        self.every_steps, self.background, self.batch_size = every_steps, background, batch_size
        self.encoder_factory = encoder_factory or (lambda p: TransformersEncoder(p))
        self.on_built = on_built
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="index-refresh") if background else None
        self._lock = threading.Lock()
        self._running: Future | None = None
        self._pending: Path | None = None
        self.last_manifest: Manifest | None = None
        self.last_error: BaseException | None = None

    def _build(self, checkpoint: Path) -> Manifest:
        encoder = self.encoder_factory(checkpoint)
        try:
            current = Manifest.read(self.out)
            if current.encoder_fingerprint == encoder.fingerprint:
                log.info("dense index at %s is already built with %s", self.out, checkpoint)
                return current
        except FileNotFoundError:
            pass
        manifest = build_faiss_index(self.docs_factory(), encoder, self.out, self.index_string, kind=self.kind,
                                     batch_size=self.batch_size, encoder_path=checkpoint, progress=False)
        self.last_manifest = manifest
        if self.on_built:
            self.on_built(manifest)
        return manifest

    def _run(self, checkpoint: Path) -> Manifest:
        try:
            return self._build(checkpoint)
        except BaseException as exc:  # the old index stays; training goes on
            self.last_error = exc
            log.error("dense index refresh from %s failed, keeping the previous index: %s", checkpoint, exc)
            raise
        finally:
            with self._lock:
                nxt, self._pending = self._pending, None
                self._running = self._executor.submit(self._run, nxt) if nxt is not None and self._executor else None

    def refresh(self, checkpoint: str | Path) -> Future | Manifest:
        """Rebuild from `checkpoint` now (background: returns a Future; else the Manifest)."""
        checkpoint = Path(checkpoint)
        if self._executor is None:
            return self._run(checkpoint)
        with self._lock:
            if self._running is not None and not self._running.done():
                self._pending = checkpoint
                return self._running
            self._running = self._executor.submit(self._run, checkpoint)
            return self._running

    def maybe_refresh(self, step: int, checkpoint: str | Path) -> Future | Manifest | None:
        if step > 0 and step % self.every_steps == 0:
            return self.refresh(checkpoint)
        return None

    def wait(self) -> None:
        """Block until no build is running or pending."""
        while True:
            with self._lock:
                running = self._running
                if running is None or (running.done() and self._pending is None and self._running is running):
                    return
            try:
                running.result()
            except BaseException:
                pass

    def close(self) -> None:
        self.wait()
        if self._executor:
            self._executor.shutdown()
