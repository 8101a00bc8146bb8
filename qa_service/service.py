"""The KBQA REST service: FastAPI + pydantic, the pipeline behind a micro-batching queue.

- The model and KB load in the background at startup (in the worker process of
  qa_service/backend.py under `wenzhi serve`); /readyz answers 503 until they are in.
- Concurrent /v1/qa requests are gathered into one `answer_batch` call: whatever queued while the
  pipeline was busy (up to `max_batch`), so 32 clients cost a few batched passes, not 32 serial
  ones, and a lone request does not wait for company. `max_wait_ms` > 0 waits for company (worth it
  where a bigger batch is nearly free, as on a GPU; on 2 CPU cores a 5 ms wait cost a lone client
  2.1-2.7x its throughput, bench/RESULTS.md).
- Bad input is a 4xx with a reason (422 for what pydantic or our checks reject), never a 5xx; error
  bodies never echo the input (it may be huge, or not encodable: NaN, lone surrogates).
- Limits against hostile clients: bodies over `max_body_bytes` are a 413 (FastAPI's body limit),
  a Host header outside `trusted_hosts` a 400 (Starlette's TrustedHostMiddleware: no DNS
  rebinding, no redirect to a forged host), a body not in within `body_timeout_s` a 408
  (http_limits.py, with the header deadline uvicorn lacks).
- `workers` > 1 (`wenzhi serve --workers N`): N worker processes, each answering its own batches.
- A supervisor thread keeps the pipeline up: a worker process that exits is replaced (one of a
  pool while the others answer; the service stays ready), a failed
  load retried with back-off (/readyz "loading", 503s with Retry-After); after `restart_attempts`
  failed loads in a row /healthz fails too.
- One log line per request: method, path (escaped: no forged lines), status, latency.
"""
from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
from typing import Annotated

from fastapi import FastAPI, HTTPException, Path as PathParam, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from wenzhi.qa_service.backend import LocalPipeline, PipelineProcess, WorkerGone, WorkerPool, load_local
from wenzhi.qa_service.http_limits import BodyDeadline, escape_for_log
from wenzhi.qa_service.schemas import (BAD_REQUEST, MAX_NAME_CHARS, NOT_READY, CleanText, EntityResponse, ErrorOut,
                                LinkRequest, LinkResponse, QARequest, QAResponse, ReadinessOut, with_latency)
from wenzhi.qa_service.settings import ServiceSettings

log = logging.getLogger("wenzhi.service")


class Batcher:
    """Threads that hand queued questions to the backend in batches: one per worker the backend
    has, so that each worker answers a batch while the next one gathers; each batch holds at most
    `max_batch / threads` questions (rounded up)."""

    def __init__(self, backend, max_batch: int, max_wait_ms: float, threads: int = 1):
        self.backend = backend
        # `max_batch` questions in flight at most, split evenly: one thread taking all that queued
        # while the other took one made the slowest answers slower (bench/RESULTS.md)
        self.max_batch = -(-max_batch // threads)
        self.max_wait = max_wait_ms / 1e3
        self.queue: queue.Queue = queue.Queue()
        self._closed = False
        self._close_lock = threading.Lock()  # nothing is queued behind the closing marker
        self._count_lock = threading.Lock()
        self.batches = self.questions = 0  # so far: questions / batches is the mean batch size
        self.largest = 0  # the largest batch so far
        self.threads = [threading.Thread(target=self._run, name=f"qa-batcher-{i}", daemon=True) for i in range(threads)]
        for thread in self.threads:
            thread.start()

    def submit(self, question: str, top_k: int) -> asyncio.Future:
        """From the event loop: a future of that loop, resolved when the question's batch is done."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._close_lock:
            if self._closed:
                raise WorkerGone("the QA pipeline is being replaced")
            self.queue.put((question, top_k, fut, loop))
        return fut

    @staticmethod
    def _deliver(batch, outcome) -> None:
        """One call per batch on the event loop (not one wake-up per request): set each future."""
        for (_, _, fut, _), value in zip(batch, outcome):
            if not fut.done():
                if isinstance(value, BaseException):
                    fut.set_exception(value)
                else:
                    fut.set_result(value)

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                self.queue.put(None)  # for the other threads
                return
            batch = [item]
            deadline = time.perf_counter() + self.max_wait
            while len(batch) < self.max_batch:
                remaining = deadline - time.perf_counter()
                try:
                    nxt = self.queue.get(timeout=max(remaining, 0)) if remaining > 0 else self.queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self.queue.put(None)
                    break
                batch.append(nxt)
            batch = [b for b in batch if not b[2].cancelled()]  # timed out while queued
            if not batch:
                continue
            with self._count_lock:
                self.batches += 1
                self.questions += len(batch)
                self.largest = max(self.largest, len(batch))
            try:
                outcome = self.backend.answer_batch([(b[0], b[1]) for b in batch])
            except Exception as exc:  # noqa: BLE001 - handed to each waiting request
                log.error("batch failed: %s", exc)
                outcome = [exc] * len(batch)
            for loop in {b[3] for b in batch}:
                mine = [(b, o) for b, o in zip(batch, outcome) if b[3] is loop]
                try:
                    loop.call_soon_threadsafe(self._deliver, [b for b, _ in mine], [o for _, o in mine])
                except RuntimeError:  # that loop has closed (shutdown): nobody is waiting
                    pass

    def close(self) -> None:
        with self._close_lock:
            self._closed = True
            self.queue.put(None)


NO_WORKER_LEFT = "every QA worker process has exited; replacements are loading, retry shortly"


class ServiceState:
    """Loads the backend and keeps one running: a supervisor thread loads it, watches a worker
    process, and replaces one that exits (killed, out of memory), retrying a failed load with
    exponential back-off. After `restart_attempts` failed loads in a row it gives up: /healthz
    then fails too, so that whatever supervises the process restarts it (`wenzhi serve` exits).
    A worker that exits after loading is replaced at once (it was up: the count starts again);
    one killed while loading is a failed load."""

    def __init__(self, settings: ServiceSettings, loader=None, on_gave_up=None):
        self.settings = settings
        self.backend: LocalPipeline | PipelineProcess | WorkerPool | None = None
        self.batcher: Batcher | None = None
        self.status = "loading"  # loading, ready or failed (given up)
        self.error: str | None = None  # why not ready
        self.ready = threading.Event()
        self.on_gave_up = on_gave_up
        self._loader = loader
        self._closing = threading.Event()
        self._lock = threading.Lock()  # backend, batcher and closing change together
        self._retry_at = 0.0  # monotonic time of the next load attempt
        self._load_s = 5.0  # how long the last load took: what a client waits beyond the back-off
        self._thread: threading.Thread | None = None
        self._loading: PipelineProcess | None = None  # a pool's replacement worker while it loads

    def start(self) -> None:
        self._thread = threading.Thread(target=self._supervise, name="qa-supervisor", daemon=True)
        self._thread.start()

    def _start_backend(self):
        s = self.settings
        if self._loader is None and s.worker_process:
            options = dict(index=s.index, use_gen=s.use_gen, threads=s.threads, manage_gc=s.manage_gc)
            worker = (WorkerPool(s.workers, s.model, s.kb, **options) if s.workers > 1
                      else PipelineProcess(s.model, s.kb, **options))
            with self._lock:  # before it is ready, so that shutdown can stop a loading worker
                if self._closing.is_set():
                    worker.close()
                    raise WorkerGone("the service is shutting down")
                self.backend = worker
            try:
                worker.wait_ready()
            except BaseException:
                worker.close()
                raise
            return worker
        pipeline = self._loader() if self._loader is not None else None
        return load_local(s.model, s.kb, s.index, s.use_gen, s.threads, s.manage_gc, pipeline=pipeline)

    def _supervise(self) -> None:
        s = self.settings
        failures = 0
        while not self._closing.is_set():
            started = time.perf_counter()
            try:
                backend = self._start_backend()
            except Exception as exc:  # noqa: BLE001 - reported by /readyz, retried
                if self._closing.is_set():
                    return
                failures += 1
                reason = f"{type(exc).__name__}: {exc}"
                log.error("loading failed (attempt %d of %d): %s", failures, s.restart_attempts, reason)
                if failures >= s.restart_attempts:
                    self._give_up(f"the QA pipeline could not be loaded in {failures} attempts; last: {reason}")
                    return
                delay = self._backoff_s(failures)
                self._retry_at = time.monotonic() + delay
                self.error = f"{reason}; attempt {failures + 1} of {s.restart_attempts} in {delay:g} s"
                if self._closing.wait(delay):
                    return
                continue
            with self._lock:
                if self._closing.is_set():
                    backend.close()
                    return
                self.backend = backend
                self.batcher = Batcher(backend, s.max_batch, s.max_wait_ms,
                                       threads=backend.size if isinstance(backend, WorkerPool) else 1)
            failures = 0
            self._load_s = time.perf_counter() - started
            self.error, self.status = None, "ready"
            self.ready.set()
            log.info("ready: model and KB loaded in %.1f s", self._load_s)
            if isinstance(backend, WorkerPool):
                if not self._keep_pool(backend):
                    return  # closing, or given up
                self.error = f"every QA worker process has exited; starting {backend.size} new ones"
            elif isinstance(backend, PipelineProcess):
                code = backend.wait_exit(self._closing)
                if self._closing.is_set():
                    return
                self.error = f"the QA worker process exited (code {code}); starting a new one"
            else:
                return  # in this process: nothing to watch
            self.ready.clear()
            self.status = "loading"
            self._retry_at = 0.0
            log.error("%s", self.error)
            with self._lock:
                self.batcher.close()  # fails what is still queued with WorkerGone (503)
                backend.close()

    def _keep_pool(self, pool: WorkerPool) -> bool:
        """Replace each worker of the pool that exits, one at a time, while the others answer (the
        service stays ready); failed loads of a replacement count and back off as loads do. True when
        no worker is left (the caller loads a new pool); False when closing or given up."""
        s = self.settings
        failures = 0
        while True:
            dead = pool.wait_dead(self._closing)
            if dead is None:
                return False
            log.error("a QA worker process exited (code %s); %d of %d answering; starting a replacement",
                      dead.process.exitcode, pool.alive(), pool.size)
            while True:
                if pool.alive() == 0:
                    return True
                error = self._load_replacement(pool)
                if error is None:
                    break
                if self._closing.is_set():
                    return False
                failures += 1
                log.error("loading a replacement worker failed (attempt %d of %d): %s", failures,
                          s.restart_attempts, error)
                if failures >= s.restart_attempts:
                    self.ready.clear()
                    self._give_up(f"a QA worker could not be loaded in {failures} attempts; last: {error}")
                    return False
                if self._closing.wait(self._backoff_s(failures)):
                    return False
            failures = 0
            log.info("a replacement QA worker answers: %d of %d", pool.alive(), pool.size)

    def _load_replacement(self, pool: WorkerPool) -> str | None:
        """Load one worker and add it to the pool: None, or why it did not join."""
        replacement = pool.new_worker()
        with self._lock:  # registered, so that shutdown stops it while it loads
            if self._closing.is_set():
                replacement.close()
                return "the service is shutting down"
            self._loading = replacement
        try:
            replacement.wait_ready()
            error = None
        except Exception as exc:  # noqa: BLE001 - the caller retries with back-off
            error = f"{type(exc).__name__}: {exc}"
        with self._lock:  # under the lock shutdown takes: no worker joins a closed pool
            self._loading = None
            if error is None and not self._closing.is_set():
                pool.add(replacement)
                return None
        replacement.close()
        return error or "the service is shutting down"

    def _backoff_s(self, failures: int) -> float:
        """The wait before the next load attempt after `failures` failed ones in a row."""
        s = self.settings
        return min(s.restart_backoff_s * 2 ** (failures - 1), s.restart_backoff_max_s)

    def answering(self) -> bool:
        """Whether a live worker is there to answer: a pool whose workers all exited is not, while
        its replacements load (it is still the backend; `ready` stays set)."""
        backend = self.backend
        return not isinstance(backend, WorkerPool) or backend.alive() > 0

    def _give_up(self, reason: str) -> None:
        self.error, self.status = reason, "failed"
        log.error("giving up: %s", reason)
        if self.on_gave_up is not None:
            self.on_gave_up()

    def retry_after_s(self) -> int:
        """Seconds a client should wait before asking again (the Retry-After of a 503)."""
        return max(1, math.ceil(max(self._retry_at - time.monotonic(), 0) + self._load_s))

    def close(self) -> None:
        with self._lock:
            self._closing.set()
            self.ready.clear()
            batcher, backend, loading = self.batcher, self.backend, self._loading
        if batcher:
            batcher.close()
        if backend:
            backend.close()
        if loading:
            loading.close()
        if self._thread is not None:  # a worker it is starting sees the flag and is stopped; an
            self._thread.join(2)      # in-process load cannot be interrupted (a daemon thread)


class AccessLog:
    """One log line per request: method, path, status, latency. A plain ASGI middleware: Starlette's
    `@app.middleware("http")` (BaseHTTPMiddleware) runs every request through an extra task and
    memory streams: CPU the event loop spends on every request."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:  # the path is the client's text: escaped, so that it cannot forge log lines
            log.info("%s %s %d %.1fms", scope["method"], escape_for_log(scope["path"]), status,
                     (time.perf_counter() - t0) * 1e3)


MAX_ERRORS_SHOWN = 10  # a body of 10,000 bad keys gets 10 itemised errors and a count


def _validation_errors(errors: list[dict]) -> dict:
    """pydantic's errors without what the client sent: no `input` (unbounded, and not always
    JSON: NaN, lone surrogates) and no `ctx`; names in `loc` (which may be the client's own keys)
    escaped and cut short."""
    reasons, shown = [], []
    for err in errors[:MAX_ERRORS_SHOWN]:
        loc = [p if isinstance(p, int) else escape_for_log(str(p), 64) for p in err.get("loc", ())]
        msg = escape_for_log(str(err.get("msg", "")), 200)
        if err.get("type") == "json_invalid" and isinstance(err.get("ctx"), dict):
            msg += f": {escape_for_log(str(err['ctx'].get('error', '')), 100)}"  # json's message, not the body
        where = ".".join(str(p) for p in loc if p != "body") or "body"
        reasons.append(f"{where}: {msg}")
        shown.append({"type": str(err.get("type", "")), "loc": loc, "msg": msg})
    if len(errors) > MAX_ERRORS_SHOWN:
        reasons.append(f"... and {len(errors) - MAX_ERRORS_SHOWN} more")
    return {"detail": "; ".join(reasons) or "invalid request", "errors": shown}


def create_app(settings: ServiceSettings, loader=None, on_gave_up=None) -> FastAPI:
    """The app; `loader` (a callable returning a pipeline) replaces the default loading (tests
    use it to hold loading back and watch /readyz); `on_gave_up` is called once the backend could
    not be loaded `settings.restart_attempts` times in a row (`wenzhi serve` then exits)."""
    state = ServiceState(settings, loader, on_gave_up)

    async def lifespan(app: FastAPI):
        state.start()
        yield
        state.close()

    app = FastAPI(title="wenzhi KBQA", version="0.1.0", lifespan=lifespan, max_body_size=settings.max_body_bytes,
                  description="Answers Chinese questions from a knowledge base, with the supporting triple.")
    app.state.qa = state

    # outermost last: every response is logged, a foreign Host is refused before anything else
    app.add_middleware(BodyDeadline, timeout_s=settings.body_timeout_s)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(settings.trusted_hosts), www_redirect=False)
    app.add_middleware(AccessLog)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        return JSONResponse(status_code=422, content=_validation_errors(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        # a body over the limit that came without a Content-Length (one with a Content-Length over
        # it gets Starlette's plain-text 413 before any of it is read)
        if exc.status_code == 413:
            exc = StarletteHTTPException(413, f"Content Too Large: the request body is over {settings.max_body_bytes} bytes",
                                         headers={"Connection": "close"})
        return await http_exception_handler(request, exc)

    def not_ready(detail: str) -> HTTPException:
        return HTTPException(503, detail=detail, headers={"Retry-After": str(state.retry_after_s())})

    def require_ready():
        if not state.ready.is_set():
            raise not_ready(state.error or "loading the model and the KB, retry shortly")
        if not state.answering():
            raise not_ready(NO_WORKER_LEFT)
        return state.backend

    def call_backend(method, *args):
        try:
            return method(*args)
        except WorkerGone as exc:  # the supervisor has seen it too, and is starting a new one
            raise not_ready(str(exc)) from None

    @app.get("/healthz", response_model=ReadinessOut,
             responses={503: {"model": ReadinessOut, "description": "the pipeline could not be (re)loaded: given up"}})
    def healthz():
        if state.status == "failed":
            return JSONResponse(status_code=503, content={"status": "failed", "detail": state.error})
        return {"status": "ok"}

    @app.get("/readyz", response_model=ReadinessOut,
             responses={503: {"model": ReadinessOut, "description": "loading (or given up: failed)"}})
    def readyz():
        if state.ready.is_set():
            if state.answering():
                return {"status": "ready"}
            return JSONResponse(status_code=503, content={"status": "loading", "detail": NO_WORKER_LEFT},
                                headers={"Retry-After": str(state.retry_after_s())})
        if state.status == "failed":
            return JSONResponse(status_code=503, content={"status": "failed", "detail": state.error})
        return JSONResponse(status_code=503, content={"status": "loading", "detail": state.error},
                            headers={"Retry-After": str(state.retry_after_s())})

    @app.post("/v1/qa", response_model=QAResponse,
              responses={**BAD_REQUEST, **NOT_READY, 504: {"model": ErrorOut, "description": "timed out"}})
    async def qa(req: QARequest) -> Response:
        require_ready()
        t0 = time.perf_counter()
        try:
            fut = state.batcher.submit(req.question, req.top_k)
            body = await asyncio.wait_for(fut, timeout=settings.timeout_s)
        except asyncio.TimeoutError:
            fut.cancel()
            raise HTTPException(504, detail=f"no answer within {settings.timeout_s:g} s") from None
        except WorkerGone as exc:
            raise not_ready(str(exc)) from None
        # the body was built where the pipeline ran; only the latency is this side's to add
        return Response(with_latency(body, (time.perf_counter() - t0) * 1e3), media_type="application/json")

    @app.post("/v1/link", response_model=LinkResponse, responses={**BAD_REQUEST, **NOT_READY})
    def link(req: LinkRequest) -> Response:
        backend = require_ready()
        return Response(call_backend(backend.link, req.text), media_type="application/json")

    @app.get("/v1/entities/{name}", response_model=EntityResponse,
             responses={**BAD_REQUEST, **NOT_READY, 404: {"model": ErrorOut, "description": "no such entity"}})
    def entity(name: Annotated[str, PathParam(min_length=1, max_length=MAX_NAME_CHARS), CleanText]) -> Response:
        backend = require_ready()
        status, body = call_backend(backend.entity, name)
        if status == 404:
            raise HTTPException(404, detail=body)
        return Response(body, media_type="application/json")

    return app
