"""Corpus readers: each yields `Document`s (text plus optional word/POS spans) or `TripleSentence`s
(a KB triple with a sentence that mentions its head and tail), streaming, one line at a time.

Formats: `text` (one document per non-empty line), `jsonl` (a text field per line),
`people_daily` (PKU `word/POS` tokens), `agrikg` (the distant-supervision TSV), `kdconv`
(dialogues whose turns carry grounding `attrs`).
"""
from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

FORMATS = ("text", "jsonl", "people_daily", "agrikg", "kdconv")
# PKU tags of named entities: person, place, organisation, other proper noun.
NAMED_ENTITY_TAGS = ("nr", "ns", "nt", "nz")


@dataclass
class Document:
    text: str
    source: str
    # (start, end, POS) character spans of the segmenter's words, when the corpus carries them.
    words: list[tuple[int, int, str]] | None = None


@dataclass
class TripleSentence:
    head: str
    relation: str
    tail: str
    sentence: str
    source: str


@dataclass
class KdconvTurn:
    text: str
    attrs: list[tuple[str, str, str]] = field(default_factory=list)  # (entity name, attribute, value)


def read_text(path: str | Path, source: str | None = None) -> Iterator[Document]:
    source = source or Path(path).name
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line:
                yield Document(line, source)


def read_jsonl(path: str | Path, text_field: str = "text", source: str | None = None) -> Iterator[Document]:
    source = source or Path(path).name
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not JSON ({exc.msg})") from exc
            text = row.get(text_field) if isinstance(row, dict) else None
            if not isinstance(text, str):
                raise ValueError(f"{path}:{lineno}: no string field {text_field!r}")
            if text.strip():
                yield Document(text.strip(), source)


def parse_people_daily_line(line: str) -> tuple[str, list[tuple[int, int, str]]]:
    """`江/nr  泽民/nr  发表/v` -> ("江泽民发表", [(0,1,"nr"), (1,3,"nr"), (3,5,"v")])."""
    text: list[str] = []
    words: list[tuple[int, int, str]] = []
    pos = 0
    for item in line.split():
        word, sep, tag = item.rpartition("/")
        if not sep or not word:  # a stray token without a tag: keep its text, tag unknown
            word, tag = item, "x"
        word = word.lstrip("[")  # PKU compound brackets `[中央/n 人民/n]nt`, when present
        tag = tag.split("]")[0]
        text.append(word)
        words.append((pos, pos + len(word), tag))
        pos += len(word)
    return "".join(text), words


def read_people_daily(path: str | Path, source: str | None = None) -> Iterator[Document]:
    source = source or Path(path).name
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            text, words = parse_people_daily_line(line)
            if text:
                yield Document(text, source, words)


def named_entity_spans(words: list[tuple[int, int, str]]) -> list[tuple[int, int]]:
    """Merge runs of the same named-entity tag (PKU splits names: `江/nr 泽民/nr`)."""
    spans: list[tuple[int, int]] = []
    run_start, run_tag, run_end = None, None, None
    for start, end, tag in words + [(0, 0, "")]:
        if tag in NAMED_ENTITY_TAGS and tag == run_tag and start == run_end:
            run_end = end
            continue
        if run_start is not None:
            spans.append((run_start, run_end))
        run_start, run_tag, run_end = (start, tag, end) if tag in NAMED_ENTITY_TAGS else (None, None, None)
    return spans


def read_agrikg(path: str | Path) -> Iterator[TripleSentence]:
    """`id1 entity1 id2 entity2 "sentence" relation`; rows with a head or tail not in the sentence
    are skipped (distant supervision is noisy, and UKTP needs both in the sentence)."""
    with open(path, encoding="utf-8", newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh, delimiter="\t"), 1):
            if len(row) != 6:
                raise ValueError(f"{path}:{lineno}: expected 6 tab-separated fields, got {len(row)}")
            _, head, _, tail, sentence, relation = (x.strip() for x in row)
            if head and tail and relation and head in sentence and tail in sentence:
                yield TripleSentence(head, relation, tail, sentence, "agrikg")


def read_kdconv_dialogues(path: str | Path) -> Iterator[list[KdconvTurn]]:
    """Dialogues of one KdConv file, or of every `*.json` under a directory (sorted)."""
    path = Path(path)
    files = sorted(path.rglob("*.json")) if path.is_dir() else [path]
    for file in files:
        with open(file, encoding="utf-8") as fh:
            dialogues = json.load(fh)
        for dialogue in dialogues:
            turns = []
            for message in dialogue.get("messages", []):
                attrs = [(a.get("name", ""), a.get("attrname", ""), a.get("attrvalue", ""))
                         for a in message.get("attrs", [])]
                turns.append(KdconvTurn(message.get("message", "").strip(), attrs))
            yield turns


def read_kdconv(path: str | Path) -> Iterator[Document]:
    """Each dialogue as one document, turns joined by newlines."""
    for turns in read_kdconv_dialogues(path):
        text = "\n".join(t.text for t in turns if t.text)
        if text:
            yield Document(text, "kdconv")


def kdconv_pairs_of_dialogue(turns: list[KdconvTurn]) -> Iterator[TripleSentence]:
    """Turns grounded by an attribute whose value (the tail) the turn states. The head is the
    entity's base name; the turn often says it only implicitly, as the dialogue topic, so UKTP
    uses the turn even when the head is not in it."""
    from wenzhi.kg import parse_name

    for turn in turns:
        for name, attr, value in turn.attrs:
            if not name or not attr or not value or attr == "Information" or len(value) > 40:
                continue
            if value in turn.text:
                yield TripleSentence(parse_name(name)[0], attr, value, turn.text, "kdconv")


def kdconv_pairs(path: str | Path) -> Iterator[TripleSentence]:
    for turns in read_kdconv_dialogues(path):
        yield from kdconv_pairs_of_dialogue(turns)


def read_documents(path: str | Path, fmt: str, text_field: str = "text") -> Iterator[Document]:
    if fmt == "text":
        return read_text(path)
    if fmt == "jsonl":
        return read_jsonl(path, text_field)
    if fmt == "people_daily":
        return read_people_daily(path)
    if fmt == "kdconv":
        return read_kdconv(path)
    if fmt == "agrikg":  # the sentences as plain text, each once
        return _agrikg_documents(path)
    raise ValueError(f"unknown corpus format {fmt!r}; expected one of {FORMATS}")


def read_triple_sentences(path: str | Path, fmt: str) -> Iterator[TripleSentence]:
    if fmt == "agrikg":
        return read_agrikg(path)
    if fmt == "kdconv":
        return kdconv_pairs(path)
    raise ValueError(f"format {fmt!r} carries no triple-sentence pairs (agrikg and kdconv do)")


def _agrikg_documents(path: str | Path) -> Iterator[Document]:
    previous = None
    for pair in read_agrikg(path):
        if pair.sentence != previous:  # consecutive rows often share a sentence
            yield Document(pair.sentence, "agrikg")
        previous = pair.sentence
