"""Where the service's pipeline runs: in the service's process, or in a worker process of its own.

`wenzhi serve` runs it in a worker process, for isolation: a crash or an out-of-memory kill in
torch takes the worker down, not the HTTP side, which answers 503 while a new worker loads. It is
not for speed: on 2 cores the two arrangements served within 1.01-1.15x of each other in
interleaved runs (bench/qa_load.py --compare-in-process; the event loop's part is ~0.27 ms of CPU
per request, the pipeline's ~0.97 ms). What crosses the pipe per batch is a list of questions one
way and finished JSON bodies the other.

`WorkerPool` runs several such workers, each with its own copy of the pipeline, so that batches
are answered side by side: one worker used about 1.2 of 2 cores under load (bench/RESULTS.md).

Every backend answers the same three calls, in the shapes the endpoints send:
`answer_batch([(question, top_k), ...])` -> one JSON body (without its latency) or exception per
question, `link(text)` -> JSON body, `entity(name)` -> (status, JSON body or reason).
"""
from __future__ import annotations

import ctypes
import gc
import logging
import multiprocessing
import os
import signal
import threading
import time

from wenzhi.qa_service import schemas

log = logging.getLogger("wenzhi.service")


def _libc_malloc_trim():
    """glibc's malloc_trim, or None off glibc."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def quiet_gc() -> None:
    """Move what loading created (KB caches, alias index, model: millions of objects) out of the
    collector's sight; `LocalPipeline` does the same after every batch with what the batch added to
    the caches. Otherwise each full collection walks all of them while requests wait: pauses of
    0.1-0.4 s every few seconds under load, which were the p99 of bench/qa_load.py. Young objects are
    still collected as usual (cycles that die young); a frozen object is still freed by its refcount."""
    gc.collect()
    gc.freeze()
    if os.environ.get("WENZHI_GC_DEBUG"):  # log every collection beyond the youngest generation
        started: list[float] = []

        def timing(phase, info):
            if phase == "start":
                started[:] = [time.perf_counter()]
            elif started and info.get("generation", 0) >= 1:
                log.info("gc gen%d: %.1f ms, %d collected", info["generation"],
                         (time.perf_counter() - started[0]) * 1e3, info.get("collected", 0))

        gc.callbacks.append(timing)


class LocalPipeline:
    """A QAPipeline answering in this process.

    Every batch has another shape (questions, lengths, candidate relations), and glibc keeps the
    freed tensor memory of each in its heaps instead of giving it back: RSS grew ~60 MB per 1,000
    requests in bench/qa_load.py with no live object behind it (answer_batch in one process with
    batch sizes 1-32: 411 -> 925 MB over 3,000 questions; with malloc_trim every 500 questions:
    444 -> 462 MB). So free heap memory goes back to the OS at most every `trim_every_s` (a trim
    measured 7-23 ms)."""

    def __init__(self, pipeline, manage_gc: bool = False, trim_every_s: float = 2.0):
        self.pipeline = pipeline
        self.manage_gc = manage_gc
        self.trim_every_s = trim_every_s
        self._malloc_trim = _libc_malloc_trim()
        self._last_trim = time.perf_counter()
        self._threads_set_in: int | None = None

    def _set_threads(self) -> None:
        # OpenMP keeps the thread count per OS thread, and the pipeline was loaded (and its setting
        # made) in another thread than the one answering
        threads = getattr(getattr(self.pipeline, "config", None), "threads", None)
        if threads and self._threads_set_in != threading.get_ident():
            import torch

            torch.set_num_threads(threads)
            self._threads_set_in = threading.get_ident()

    def answer_batch(self, items: list[tuple[str, int]]) -> list:
        self._set_threads()
        try:
            answers = self.pipeline.answer_batch([q for q, _ in items], max(k for _, k in items))
            out = [schemas.qa_body_without_latency(q, k, a) for (q, k), a in zip(items, answers)]
        except Exception as exc:  # noqa: BLE001 - handed to each waiting request
            log.exception("batch failed")
            out = [exc] * len(items)
        if self.manage_gc:
            gc.freeze()  # O(1): what survived this batch joins the frozen objects (see quiet_gc)
        now = time.perf_counter()
        if now - self._last_trim >= self.trim_every_s:
            if self._malloc_trim is not None:
                self._malloc_trim(0)
            self._last_trim = now
        return out

    def link(self, text: str) -> str:
        pipe = self.pipeline
        with pipe._lock:
            mentions = pipe.linker.link(text)
        return schemas.link_body(text, mentions)

    def entity(self, name: str) -> tuple[int, str]:
        store = self.pipeline.store
        with self.pipeline._lock:
            ent = store.entity_by_name(name)
            homonyms = store.entities_by_base(ent.base if ent else name)
            if ent is None:
                names = [h.name for h in homonyms[:20]]
                return 404, f"no entity named {name!r}" + (
                    f"; entities with that base name: {names}" if names else "")
            return 200, schemas.entity_body(ent, store.triples(ent.id), homonyms)

    def close(self) -> None:
        self.pipeline.close()


def load_local(model: str, kb: str, index: str | None = None, use_gen: bool = True,
               threads: int | None = None, manage_gc: bool = False, pipeline=None) -> LocalPipeline:
    """Load the pipeline (or wrap the one given) in this process, the caches out of gc's sight."""
    if pipeline is None:
        from wenzhi.qa_service.pipeline import PipelineConfig, QAPipeline

        config = PipelineConfig.load(model, use_gen=use_gen, threads=threads)
        if config.mode == "fused" and not (config.w_gen or config.w_gen_head):
            # the fusion fit weighed GEN at 0: the service would never decode it, so it is not loaded
            # (its model and KB trie: memory and start-up time for nothing)
            config.use_gen = False
        pipeline = QAPipeline(model, kb, config, index=index)
    if manage_gc:
        quiet_gc()
    return LocalPipeline(pipeline, manage_gc=manage_gc)


class WorkerGone(RuntimeError):
    """The worker process exited (killed, out of memory): the service is no longer ready."""


def _worker_main(conn, model: str, kb: str, index: str | None, use_gen: bool, threads: int | None,
                 manage_gc: bool) -> None:
    """The worker process: load the pipeline, say so, then answer calls until told to stop or the
    service's end of the pipe closes."""
    # Ctrl-C reaches the whole process group: the service stops this worker in order (lifespan)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s[worker]: %(message)s")
    started = time.perf_counter()
    try:
        local = load_local(model, kb, index, use_gen, threads, manage_gc)
    except Exception as exc:  # noqa: BLE001 - reported by /readyz
        log.exception("loading failed")
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", time.perf_counter() - started))
    calls = {"qa": local.answer_batch, "link": local.link, "entity": local.entity}
    while True:
        try:
            op, arg = conn.recv()
        except (EOFError, OSError):  # the service is gone
            break
        if op == "stop":
            break
        try:
            value = calls[op](arg)
            if op == "qa":  # not every exception pickles: per-question failures travel as text
                value = [RuntimeError(f"{type(r).__name__}: {r}") if isinstance(r, BaseException) else r
                         for r in value]
            result = ("ok", value)
        except Exception as exc:  # noqa: BLE001 - raised again in the service
            log.exception("%s failed", op)
            result = ("error", f"{type(exc).__name__}: {exc}")
        conn.send(result)
    local.close()


class PipelineProcess:
    """The same calls as `LocalPipeline`, answered by one in a spawned worker process.

    Spawned, not forked: the service process runs an event loop and threads that a fork would copy
    in mid-flight. One call at a time crosses the pipe (the worker answers in order anyway)."""

    def __init__(self, model: str, kb: str, index: str | None = None, use_gen: bool = True,
                 threads: int | None = None, manage_gc: bool = False):
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, name="wenzhi-qa-worker", daemon=True,
                                   args=(child, model, kb, index, use_gen, threads, manage_gc))
        self.process.start()
        child.close()  # ours is closed too once the worker exits: recv then raises EOFError
        self._lock = threading.Lock()

    def wait_ready(self) -> float:
        """Block until the worker has loaded; seconds it took. Raises if loading failed."""
        status, value = self._recv()
        if status != "ready":
            raise RuntimeError(value)
        return value

    def _recv(self):
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            raise self._gone() from None

    def _gone(self) -> WorkerGone:
        self.process.join(1)
        return WorkerGone(f"the QA worker process exited (code {self.process.exitcode})")

    def _call(self, op: str, arg):
        with self._lock:
            try:
                self._conn.send((op, arg))
            except OSError:  # BrokenPipeError, or our end closed after the worker died
                raise self._gone() from None
            status, value = self._recv()
        if status != "ok":
            raise RuntimeError(value)
        return value

    def wait_exit(self, stop: threading.Event, poll_s: float = 0.2) -> int | None:
        """Block until the worker process exits (its exit code: -9 for a SIGKILL) or `stop` is set."""
        while not stop.is_set():
            self.process.join(poll_s)
            if self.process.exitcode is not None:
                return self.process.exitcode
        return self.process.exitcode

    def answer_batch(self, items: list[tuple[str, int]]) -> list:
        return self._call("qa", items)

    def link(self, text: str) -> str:
        return self._call("link", text)

    def entity(self, name: str) -> tuple[int, str]:
        return self._call("entity", name)

    def request_stop(self) -> None:
        """Ask the worker to stop once its current call is answered; `close` waits for it."""
        with self._lock:
            try:
                self._conn.send(("stop", None))
            except OSError:
                pass

    def close(self) -> None:
        self.request_stop()
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
        self._conn.close()


class WorkerPool:
    """The calls of `PipelineProcess`, spread over worker processes: each call goes to an idle
    worker (waiting for one when all are busy), so up to `size` batches are answered at once.

    A worker that exits is dropped (calls go to the others) and `wait_dead` hands it to the
    supervisor (qa_service/service.py), which loads a replacement and `add`s it while the pool
    keeps answering. Only a pool with no live worker left fails its calls (WorkerGone: 503s)."""

    def __init__(self, size: int, model: str, kb: str, index: str | None = None, use_gen: bool = True,
                 threads: int | None = None, manage_gc: bool = False):
        if size < 1:
            raise ValueError(f"a pool needs at least one worker, not {size}")
        self._model, self._kb = model, kb
        self._options = dict(index=index, use_gen=use_gen, threads=threads, manage_gc=manage_gc)
        self._available = threading.Condition()  # guards workers and _idle
        self.workers: list[PipelineProcess] = []
        self._idle: list[PipelineProcess] = []
        self.size = size
        self.calls: dict[int, int] = {}  # answered calls per worker process id
        try:
            for _ in range(size):
                self.workers.append(self.new_worker())
        except BaseException:
            self.close()
            raise
        self._idle = list(self.workers)

    def new_worker(self) -> PipelineProcess:
        """A worker process for this pool, started (not yet loaded, not yet in the pool: see `add`)."""
        return PipelineProcess(self._model, self._kb, **self._options)

    def alive(self) -> int:
        with self._available:
            return sum(w.process.exitcode is None for w in self.workers)

    def wait_ready(self) -> float:
        """Block until every worker has loaded (they load side by side); the slowest one's seconds."""
        return max(worker.wait_ready() for worker in self.workers)

    def wait_dead(self, stop: threading.Event, poll_s: float = 0.2) -> PipelineProcess | None:
        """Block until a worker exits: that worker, closed and out of the pool. None once `stop` is set."""
        while not stop.is_set():
            with self._available:
                workers = list(self.workers)
            for worker in workers:
                worker.process.join(poll_s / max(len(workers), 1))
                if worker.process.exitcode is not None:
                    with self._available:
                        self.workers.remove(worker)
                        if worker in self._idle:
                            self._idle.remove(worker)
                    worker.close()
                    return worker
            if not workers:
                stop.wait(poll_s)
        return None

    def add(self, worker: PipelineProcess) -> None:
        """A loaded worker joins the pool (the replacement of one `wait_dead` returned)."""
        with self._available:
            self.workers.append(worker)
            self._idle.append(worker)
            self._available.notify()

    def _take(self) -> PipelineProcess:
        with self._available:
            while True:
                while self._idle:
                    worker = self._idle.pop(0)
                    if worker.process.exitcode is None:
                        return worker
                if not any(w.process.exitcode is None for w in self.workers):
                    raise WorkerGone("every QA worker process has exited; starting new ones")
                self._available.wait(0.2)  # all busy: the first one back (or a dead one noticed)

    def _on_idle(self, call: str, arg):
        worker = self._take()
        try:
            return getattr(worker, call)(arg)
        finally:
            with self._available:
                self.calls[worker.process.pid] = self.calls.get(worker.process.pid, 0) + 1
                if worker in self.workers and worker.process.exitcode is None:
                    self._idle.append(worker)
                    self._available.notify()

    def answer_batch(self, items: list[tuple[str, int]]) -> list:
        return self._on_idle("answer_batch", items)

    def link(self, text: str) -> str:
        return self._on_idle("link", text)

    def entity(self, name: str) -> tuple[int, str]:
        return self._on_idle("entity", name)

    def close(self) -> None:
        with self._available:
            workers = list(self.workers)
        for worker in workers:  # all of them stop side by side: a shutdown waits for the slowest only
            worker.request_stop()
        for worker in workers:
            worker.close()
