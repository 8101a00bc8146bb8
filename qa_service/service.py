"""The KBQA REST service: FastAPI + pydantic, the pipeline behind a micro-batching queue.

- The model and KB load in a background thread at startup; /readyz answers 503 until they are in.
- Concurrent /v1/qa requests are gathered into one `answer_batch` call (up to `max_batch`, waiting
  at most `max_wait_ms` for company), so 32 clients cost a few batched passes, not 32 serial ones.
- Bad input is a 4xx with a reason (422 for what pydantic or our checks reject), never a 5xx.
- One log line per request: method, path, status, latency.
"""
from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import logging
import queue
import threading
import time
import unicodedata
from dataclasses import dataclass
from typing import Annotated

from fastapi import FastAPI, HTTPException, Path as PathParam, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

log = logging.getLogger("wenzhi.service")

MAX_QUESTION_CHARS = 256
MAX_TEXT_CHARS = 2000
MAX_NAME_CHARS = 256


def _clean_text(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or whitespace only")
    for ch in value:
        cat = unicodedata.category(ch)
        if (cat == "Cc" and ch not in "\t\n\r") or cat in ("Cs", "Co", "Cn"):
            raise ValueError(f"contains a control or invalid character U+{ord(ch):04X}")
    return value


CleanText = AfterValidator(_clean_text)


class QARequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    question: Annotated[str, Field(min_length=1, max_length=MAX_QUESTION_CHARS,
                                   description="a Chinese question"), CleanText]
    top_k: Annotated[int, Field(ge=1, le=20)] = 5


class LinkRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    text: Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS), CleanText]


class ErrorOut(BaseModel):
    detail: str


class BadRequestOut(BaseModel):
    detail: str = Field(description="why the request was rejected")
    errors: list[dict] = Field(default_factory=list, description="pydantic's itemised errors")


class ReadinessOut(BaseModel):
    status: str
    detail: str | None = None


BAD_REQUEST = {422: {"model": BadRequestOut, "description": "invalid input (type, length, blank, control characters, JSON)"},
               400: {"model": ErrorOut, "description": "a body that cannot be parsed at all (e.g. not UTF-8)"}}
NOT_READY = {503: {"model": ErrorOut, "description": "the model and KB are still loading"}}


class TripleOut(BaseModel):
    head: str
    relation: str
    tail: str


class EntityRef(BaseModel):
    id: int
    name: str
    disambiguation: str | None = None


class MentionOut(BaseModel):
    text: str
    start: int
    end: int


class AnswerOut(BaseModel):
    triple: TripleOut
    entity: EntityRef
    mention: MentionOut | None
    confidence: float
    scores: dict[str, float | None]


class QAResponse(BaseModel):
    question: str
    answer: AnswerOut | None = Field(description="the best answer; null below the no-answer threshold")
    answers: list[AnswerOut] = Field(description="top_k candidate answers, best first")
    ner_spans: list[tuple[int, int]]
    latency_ms: float


class LinkedMention(BaseModel):
    mention: str
    start: int
    end: int
    entity: EntityRef | None
    score: float
    candidates: list[tuple[str, float]]


class LinkResponse(BaseModel):
    text: str
    mentions: list[LinkedMention]


class EntityResponse(BaseModel):
    entity: EntityRef
    description: str | None
    triples: list[TripleOut]
    homonyms: list[EntityRef]


@dataclass
class ServiceSettings:
    model: str
    kb: str
    index: str | None = None
    use_gen: bool = True
    timeout_s: float = 10.0
    max_batch: int = 32
    max_wait_ms: float = 5.0
    threads: int | None = None
    manage_gc: bool = False  # `wenzhi serve`: the process is the service's own (see _quiet_gc)


def _libc_malloc_trim():
    """glibc's malloc_trim, or None off glibc."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


class Batcher:
    """A worker thread that answers queued questions in batches.

    Every batch has another shape (questions, lengths, candidate relations), and glibc keeps the
    freed tensor memory of each in its heaps instead of giving it back: RSS grew ~60 MB per 1,000
    requests in bench/qa_load.py with no live object behind it (answer_batch in one process with
    batch sizes 1-32: 411 -> 925 MB over 3,000 questions; with malloc_trim every 500 questions:
    444 -> 462 MB). So the worker hands free heap memory back to the OS at most every
    `trim_every_s` (a trim measured 7-23 ms)."""

    def __init__(self, pipeline, max_batch: int, max_wait_ms: float, trim_every_s: float = 2.0,
                 manage_gc: bool = False):
        self.pipeline = pipeline
        self.manage_gc = manage_gc
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1e3
        self.trim_every_s = trim_every_s
        self._malloc_trim = _libc_malloc_trim()
        self._last_trim = time.perf_counter()
        self.queue: queue.Queue = queue.Queue()
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
        threads = getattr(getattr(self.pipeline, "config", None), "threads", None)
        if threads:
            import torch

            # set where the work runs: OpenMP keeps the thread count per OS thread, and the pipeline
            # was loaded (and its setting made) in the loader thread
            torch.set_num_threads(threads)
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
            try:
                outcome = self.pipeline.answer_batch([b[0] for b in batch], max(b[1] for b in batch))
            except Exception as exc:  # noqa: BLE001 - handed to each waiting request
                log.exception("batch failed")
                outcome = [exc] * len(batch)
            for loop in {b[3] for b in batch}:
                mine = [(b, o) for b, o in zip(batch, outcome) if b[3] is loop]
                try:
                    loop.call_soon_threadsafe(self._deliver, [b for b, _ in mine], [o for _, o in mine])
                except RuntimeError:  # that loop has closed (shutdown): nobody is waiting
                    pass
            if self.manage_gc:
                gc.freeze()  # O(1): what survived this batch joins the frozen objects (see _quiet_gc)
            self._trim()

    def _trim(self) -> None:
        now = time.perf_counter()
        if now - self._last_trim >= self.trim_every_s:
            if self._malloc_trim is not None:
                self._malloc_trim(0)
            self._last_trim = now

    def close(self) -> None:
        self.queue.put(None)


def _quiet_gc() -> None:
    """Move what loading created (KB caches, alias index, model: millions of objects) out of the
    collector's sight; the batcher does the same after every batch with what the batch added to the
    caches. Otherwise each full collection walks all of them while requests wait: pauses of 0.1-0.4 s
    every few seconds under load, which were the p99 of bench/qa_load.py. Young objects are still
    collected as usual (cycles that die young); a frozen object is still freed by its refcount."""
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


class ServiceState:
    def __init__(self, settings: ServiceSettings, loader=None):
        self.settings = settings
        self.pipeline = None
        self.batcher: Batcher | None = None
        self.error: str | None = None
        self.ready = threading.Event()
        self._loader = loader or self._load_pipeline

    def _load_pipeline(self):
        from qa_service.pipeline import PipelineConfig, QAPipeline

        config = PipelineConfig.load(self.settings.model, use_gen=self.settings.use_gen,
                                     threads=self.settings.threads)
        return QAPipeline(self.settings.model, self.settings.kb, config, index=self.settings.index)

    def load(self) -> None:
        started = time.perf_counter()
        try:
            self.pipeline = self._loader()
            if self.settings.manage_gc:
                _quiet_gc()
            self.batcher = Batcher(self.pipeline, self.settings.max_batch, self.settings.max_wait_ms,
                                   manage_gc=self.settings.manage_gc)
            self.ready.set()
            log.info("ready: model and KB loaded in %.1f s", time.perf_counter() - started)
        except Exception as exc:  # noqa: BLE001 - reported by /readyz
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("loading failed")


def _answer_out(c) -> AnswerOut:
    mention = None
    if c.mention:
        mention = MentionOut(text="", start=c.mention[0], end=c.mention[1])
    return AnswerOut(triple=TripleOut(head=c.head, relation=c.relation, tail=c.tail),
                     entity=EntityRef(id=c.entity_id, name=c.head, disambiguation=c.disambiguation),
                     mention=mention, confidence=round(c.confidence, 6),
                     scores={"fused": round(c.score, 4), "link": round(c.link, 4),
                             "sim": None if c.sim is None else round(c.sim, 4), "gen": round(c.gen, 4)})


class AccessLog:
    """One log line per request: method, path, status, latency. A plain ASGI middleware: Starlette's
    `@app.middleware("http")` (BaseHTTPMiddleware) runs every request through an extra task and
    memory streams, CPU taken from the batcher's core when 32 clients are served."""

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
        if state.batcher:
            state.batcher.close()
        if state.pipeline:
            state.pipeline.close()

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
        return state.pipeline

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
            ans = await asyncio.wait_for(fut, timeout=settings.timeout_s)
        except asyncio.TimeoutError:
            fut.cancel()
            raise HTTPException(504, detail=f"no answer within {settings.timeout_s:g} s") from None
        answers = []
        for c in ans.candidates[: req.top_k]:
            out = _answer_out(c)
            if out.mention:
                out.mention.text = req.question[out.mention.start : out.mention.end]
            answers.append(out)
        best = answers[0] if ans.triple is not None and answers else None
        out = QAResponse(question=req.question, answer=best, answers=answers,
                         ner_spans=[tuple(s) for s in ans.ner_spans],
                         latency_ms=round((time.perf_counter() - t0) * 1e3, 2))
        # built by our own pydantic model already: serialise it once instead of FastAPI validating it again
        return Response(out.model_dump_json(), media_type="application/json")

    @app.post("/v1/link", response_model=LinkResponse, responses={**BAD_REQUEST, **NOT_READY})
    def link(req: LinkRequest) -> LinkResponse:
        pipe = require_ready()
        with pipe._lock:
            mentions = pipe.linker.link(req.text)
        return LinkResponse(text=req.text, mentions=[
            LinkedMention(mention=m.text, start=m.start, end=m.end, score=round(m.score, 4),
                          entity=EntityRef(id=m.entity.id, name=m.entity.name,
                                           disambiguation=m.entity.disambiguation) if m.entity else None,
                          candidates=[(e.name, round(s, 4)) for e, s in m.candidates[:10]])
            for m in mentions])

    @app.get("/v1/entities/{name}", response_model=EntityResponse,
             responses={**BAD_REQUEST, **NOT_READY, 404: {"model": ErrorOut, "description": "no such entity"}})
    def entity(name: Annotated[str, PathParam(min_length=1, max_length=MAX_NAME_CHARS), CleanText]) -> EntityResponse:
        pipe = require_ready()
        with pipe._lock:
            ent = pipe.store.entity_by_name(name)
            homonyms = pipe.store.entities_by_base(ent.base if ent else name)
            if ent is None:
                names = [h.name for h in homonyms[:20]]
                raise HTTPException(404, detail=f"no entity named {name!r}" + (
                    f"; entities with that base name: {names}" if names else ""))
            triples = pipe.store.triples(ent.id)
        return EntityResponse(
            entity=EntityRef(id=ent.id, name=ent.name, disambiguation=ent.disambiguation),
            description=ent.description,
            triples=[TripleOut(head=t.head, relation=t.relation, tail=t.tail) for t in triples],
            homonyms=[EntityRef(id=h.id, name=h.name, disambiguation=h.disambiguation)
                      for h in homonyms if h.id != ent.id])

    return app

