"""The KBQA REST service: FastAPI + pydantic, the pipeline behind a micro-batching queue.

- The model and KB load in the background at startup (in the worker process of
  qa_service/backend.py under `wenzhi serve`); /readyz answers 503 until they are in.
- Concurrent /v1/qa requests are gathered into one `answer_batch` call: whatever queued while the
  pipeline was busy (up to `max_batch`), so 32 clients cost a few batched passes, not 32 serial
  ones, and a lone request does not wait for company. `max_wait_ms` > 0 waits for company (worth it
  where a bigger batch is nearly free, as on a GPU; on 2 CPU cores a 5 ms wait cost a lone client
  2.1-2.7x its throughput, bench/RESULTS.md).
- Bad input is a 4xx with a reason (422 for what pydantic or our checks reject), never a 5xx.
- One log line per request: method, path, status, latency.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import FastAPI, HTTPException, Path as PathParam, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from wenzhi.qa_service.backend import LocalPipeline, PipelineProcess, WorkerGone, load_local
from wenzhi.qa_service.schemas import (BAD_REQUEST, MAX_NAME_CHARS, NOT_READY, CleanText, EntityResponse, ErrorOut,
                                LinkRequest, LinkResponse, QARequest, QAResponse, ReadinessOut, with_latency)

log = logging.getLogger("wenzhi.service")


@dataclass
class ServiceSettings:
    model: str
    kb: str
    index: str | None = None
    use_gen: bool = True
    timeout_s: float = 10.0
    max_batch: int = 32
    max_wait_ms: float = 0.0
    threads: int | None = None
    manage_gc: bool = False  # `wenzhi serve`: the process is the service's own (see backend.quiet_gc)
    worker_process: bool = False  # `wenzhi serve`: the pipeline in a process of its own (see backend.py)


class Batcher:
    """A thread that hands queued questions to the backend in batches."""

    def __init__(self, backend, max_batch: int, max_wait_ms: float, on_worker_gone=None):
        self.backend = backend
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1e3
        self.on_worker_gone = on_worker_gone
        self.queue: queue.Queue = queue.Queue()
        self.batches = self.questions = 0  # so far: questions / batches is the mean batch size
        self.thread = threading.Thread(target=self._run, name="qa-batcher", daemon=True)
        self.thread.start()

    def submit(self, question: str, top_k: int) -> asyncio.Future:
        """From the event loop: a future of that loop, resolved when the question's batch is done."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
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
            self.batches += 1
            self.questions += len(batch)
            try:
                outcome = self.backend.answer_batch([(b[0], b[1]) for b in batch])
            except Exception as exc:  # noqa: BLE001 - handed to each waiting request
                if isinstance(exc, WorkerGone) and self.on_worker_gone:
                    self.on_worker_gone(str(exc))
                log.error("batch failed: %s", exc)
                outcome = [exc] * len(batch)
            for loop in {b[3] for b in batch}:
                mine = [(b, o) for b, o in zip(batch, outcome) if b[3] is loop]
                try:
                    loop.call_soon_threadsafe(self._deliver, [b for b, _ in mine], [o for _, o in mine])
                except RuntimeError:  # that loop has closed (shutdown): nobody is waiting
                    pass

    def close(self) -> None:
        self.queue.put(None)


class ServiceState:
    def __init__(self, settings: ServiceSettings, loader=None):
        self.settings = settings
        self.backend: LocalPipeline | PipelineProcess | None = None
        self.batcher: Batcher | None = None
        self.error: str | None = None
        self.ready = threading.Event()
        self._loader = loader
        self._restart_lock = threading.Lock()

    def _start_backend(self):
        s = self.settings
        if self._loader is None and s.worker_process:
            worker = PipelineProcess(s.model, s.kb, index=s.index, use_gen=s.use_gen, threads=s.threads,
                                     manage_gc=s.manage_gc)
            self.backend = worker  # before it is ready, so that shutdown can stop a loading worker
            worker.wait_ready()
            return worker
        pipeline = self._loader() if self._loader is not None else None
        return load_local(s.model, s.kb, s.index, s.use_gen, s.threads, s.manage_gc, pipeline=pipeline)

    def load(self) -> None:
        started = time.perf_counter()
        try:
            self.backend = self._start_backend()
            self.batcher = Batcher(self.backend, self.settings.max_batch, self.settings.max_wait_ms,
                                   on_worker_gone=self.worker_gone)
            self.error = None
            self.ready.set()
            log.info("ready: model and KB loaded in %.1f s", time.perf_counter() - started)
        except Exception as exc:  # noqa: BLE001 - reported by /readyz
            self.fail(f"{type(exc).__name__}: {exc}")
            log.exception("loading failed")

    def fail(self, reason: str) -> None:
        """Not ready (loading failed): /readyz and every endpoint answer 503 with the reason."""
        self.error = reason
        self.ready.clear()

    def worker_gone(self, reason: str) -> None:
        """The worker process died (killed, out of memory): 503 with the reason while a new one loads."""
        with self._restart_lock:
            if not self.ready.is_set():  # already restarting
                return
            self.fail(f"{reason}; starting a new one")
        log.error("%s; starting a new one", reason)
        threading.Thread(target=self._restart, name="qa-restart", daemon=True).start()

    def _restart(self) -> None:
        self.close()  # the old batcher fails what is still queued with WorkerGone (503)
        self.load()

    def close(self) -> None:
        if self.batcher:
            self.batcher.close()
        if self.backend:
            self.backend.close()


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
        finally:
            log.info("%s %s %d %.1fms", scope["method"], scope["path"], status, (time.perf_counter() - t0) * 1e3)


def create_app(settings: ServiceSettings, loader=None) -> FastAPI:
    """The app; `loader` (a callable returning a pipeline) replaces the default loading (tests
    use it to hold loading back and watch /readyz)."""
    state = ServiceState(settings, loader)

    async def lifespan(app: FastAPI):
        thread = threading.Thread(target=state.load, name="qa-loader", daemon=True)
        thread.start()
        yield
        state.close()

    app = FastAPI(title="wenzhi KBQA", version="0.1.0", lifespan=lifespan,
                  description="Answers Chinese questions from a knowledge base, with the supporting triple.")
    app.state.qa = state

    app.add_middleware(AccessLog)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        reasons = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            reasons.append(f"{where}: {err.get('msg')}")
        return JSONResponse(status_code=422, content=jsonable_encoder(
            {"detail": "; ".join(reasons) or "invalid request", "errors": exc.errors()}))

    def require_ready():
        if not state.ready.is_set():
            raise HTTPException(503, detail=state.error or "loading the model and the KB, retry shortly")
        return state.backend

    def call_backend(method, *args):
        try:
            return method(*args)
        except WorkerGone as exc:
            state.worker_gone(str(exc))
            raise HTTPException(503, detail=str(exc)) from None

    @app.get("/healthz", response_model=ReadinessOut)
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", response_model=ReadinessOut,
             responses={503: {"model": ReadinessOut, "description": "still loading (or loading failed)"}})
    def readyz():
        if state.ready.is_set():
            return {"status": "ready"}
        return JSONResponse(status_code=503, content={"status": "failed" if state.error else "loading",
                                                      "detail": state.error})

    @app.post("/v1/qa", response_model=QAResponse,
              responses={**BAD_REQUEST, **NOT_READY, 504: {"model": ErrorOut, "description": "timed out"}})
    async def qa(req: QARequest) -> Response:
        require_ready()
        t0 = time.perf_counter()
        fut = state.batcher.submit(req.question, req.top_k)
        try:
            body = await asyncio.wait_for(fut, timeout=settings.timeout_s)
        except asyncio.TimeoutError:
            fut.cancel()
            raise HTTPException(504, detail=f"no answer within {settings.timeout_s:g} s") from None
        except WorkerGone as exc:
            raise HTTPException(503, detail=str(exc)) from None
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
