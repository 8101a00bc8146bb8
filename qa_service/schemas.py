"""The service's request and response models (pydantic), and the builders that turn pipeline
results into response bodies. The builders run where the pipeline runs (the worker process in
`wenzhi serve`), so the event loop only forwards finished JSON."""
from __future__ import annotations

import unicodedata
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

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
               400: {"model": ErrorOut, "description": "a body that cannot be parsed at all (e.g. not UTF-8)"},
               408: {"model": ErrorOut, "description": "the body did not arrive in time"},
               413: {"model": ErrorOut, "description": "the body is over the size limit"}}
NOT_READY = {503: {"model": ErrorOut, "description": "the model and KB are (re)loading: see Retry-After"}}


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


def _entity_ref(entity) -> EntityRef:
    return EntityRef(id=entity.id, name=entity.name, disambiguation=entity.disambiguation)


def _answer_out(question: str, c) -> AnswerOut:
    mention = None
    if c.mention:
        mention = MentionOut(text=question[c.mention[0]: c.mention[1]], start=c.mention[0], end=c.mention[1])
    return AnswerOut(triple=TripleOut(head=c.head, relation=c.relation, tail=c.tail),
                     entity=EntityRef(id=c.entity_id, name=c.head, disambiguation=c.disambiguation),
                     mention=mention, confidence=round(c.confidence, 6),
                     scores={"fused": round(c.score, 4), "link": round(c.link, 4),
                             "sim": None if c.sim is None else round(c.sim, 4), "gen": round(c.gen, 4)})


def qa_body_without_latency(question: str, top_k: int, answer) -> str:
    """A QAResponse as JSON, all but its last field: `with_latency` closes it once the request's
    latency is known where the request is (see service.py)."""
    answers = [_answer_out(question, c) for c in answer.candidates[:top_k]]
    best = answers[0] if answer.triple is not None and answers else None
    out = QAResponse(question=question, answer=best, answers=answers,
                     ner_spans=[tuple(s) for s in answer.ner_spans], latency_ms=0.0)
    return out.model_dump_json(exclude={"latency_ms"})


def with_latency(body_without_latency: str, latency_ms: float) -> str:
    # latency_ms is QAResponse's last field, so appending it keeps the declared field order
    return f'{body_without_latency[:-1]},"latency_ms":{latency_ms:.2f}}}'


def link_body(text: str, mentions) -> str:
    return LinkResponse(text=text, mentions=[
        LinkedMention(mention=m.text, start=m.start, end=m.end, score=round(m.score, 4),
                      entity=_entity_ref(m.entity) if m.entity else None,
                      candidates=[(e.name, round(s, 4)) for e, s in m.candidates[:10]])
        for m in mentions]).model_dump_json()


def entity_body(entity, triples, homonyms) -> str:
    return EntityResponse(
        entity=_entity_ref(entity), description=entity.description,
        triples=[TripleOut(head=t.head, relation=t.relation, tail=t.tail) for t in triples],
        homonyms=[_entity_ref(h) for h in homonyms if h.id != entity.id]).model_dump_json()
