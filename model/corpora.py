"""Corpus readers: each yields `Document`s (text plus optional word/POS spans) or `TripleSentence`s
(a KB triple with a sentence that mentions its head and tail), streaming, one line at a time.

Formats: `text` (one document per non-empty line), `jsonl` (a text field per line),
`people_daily` (PKU `word/POS` tokens), `agrikg` (the distant-supervision TSV), `kdconv`
(dialogues whose turns carry grounding `attrs`).

Line formats are read as bytes so every item has a `Checkpoint` (byte offset, line number):
`records(..., start=checkpoint)` resumes reading there, which lets a partition of a corpus larger
than memory be read by any worker without reading what comes before it (model/prepare_plan.py).
"""
from __future__ import annotations

import csv
import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

FORMATS = ("text", "jsonl", "people_daily", "agrikg", "kdconv")
LINE_FORMATS = ("text", "jsonl", "people_daily", "agrikg")
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


@dataclass(frozen=True)
class Checkpoint:
    """Where reading an item stream resumes: line formats keep the byte offset and line number of
    the next line; KdConv keeps the file index (`offset`) and dialogue index (`line`). `state` is
    what a reader carries from line to line (agrikg documents: the previous sentence, since
    consecutive rows sharing a sentence give one document)."""

    offset: int = 0
    line: int = 0
    state: str | None = None
    stream: int = 0  # a corpus read for pairs and text is two streams, one after the other

    def to_list(self) -> list:
        return [self.offset, self.line, self.state, self.stream]

    @classmethod
    def from_list(cls, raw) -> "Checkpoint":
        return cls(int(raw[0]), int(raw[1]), raw[2], int(raw[3]))


def _lines(path: str | Path, start: Checkpoint) -> Iterator[tuple[Checkpoint, str]]:
    """(checkpoint of the line, decoded line) from `start` on; a line that is not UTF-8 is an
    error naming its line number."""
    with open(path, "rb") as fh:
        fh.seek(start.offset)
        offset, lineno = start.offset, start.line
        for raw in fh:
            lineno += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not UTF-8 ({exc.reason})") from exc
            yield Checkpoint(offset, lineno - 1), line
            offset += len(raw)


def text_records(path: str | Path, start: Checkpoint = Checkpoint(), source: str | None = None):
    source = source or Path(path).name
    for cp, line in _lines(path, start):
        line = line.strip()
        if line:
            yield cp, Document(line, source)


def jsonl_records(path: str | Path, start: Checkpoint = Checkpoint(), text_field: str = "text",
                  source: str | None = None):
    source = source or Path(path).name
    for cp, line in _lines(path, start):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{cp.line + 1}: not JSON ({exc.msg})") from exc
        text = row.get(text_field) if isinstance(row, dict) else None
        if not isinstance(text, str):
            raise ValueError(f"{path}:{cp.line + 1}: no string field {text_field!r}")
        if text.strip():
            yield cp, Document(text.strip(), source)


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


def people_daily_records(path: str | Path, start: Checkpoint = Checkpoint(), source: str | None = None,
                         parse: bool = True):
    """parse=False: only which lines hold a document (items None), for counting: most of a
    line's parse is its words, and a line holds text as soon as one token has some."""
    source = source or Path(path).name
    for cp, line in _lines(path, start):
        if not parse:
            if _has_text(line):
                yield cp, None
            continue
        text, words = parse_people_daily_line(line)
        if text:
            yield cp, Document(text, source, words)


def _has_text(line: str) -> bool:
    """Whether parse_people_daily_line(line) gives any text (without building its words)."""
    for item in line.split():
        word, sep, _ = item.rpartition("/")
        if (word if sep and word else item).lstrip("["):
            return True
    return False


def agrikg_records(path: str | Path, start: Checkpoint = Checkpoint()):
    """`id1 entity1 id2 entity2 "sentence" relation`; rows with a head or tail not in the sentence
    are skipped (distant supervision is noisy, and UKTP needs both in the sentence). One row per
    line (a quoted field spanning lines would be an error naming the line)."""
    for cp, line in _lines(path, start):
        line = line.rstrip("\r\n")
        if not line:
            continue
        row = next(csv.reader([line], delimiter="\t"))
        if len(row) != 6:
            raise ValueError(f"{path}:{cp.line + 1}: expected 6 tab-separated fields, got {len(row)}")
        _, head, _, tail, sentence, relation = (x.strip() for x in row)
        if head and tail and relation and head in sentence and tail in sentence:
            yield cp, TripleSentence(head, relation, tail, sentence, "agrikg")


def agrikg_document_records(path: str | Path, start: Checkpoint = Checkpoint()):
    """The sentences as plain text, each once (consecutive rows often share a sentence)."""
    previous = start.state
    for cp, pair in agrikg_records(path, Checkpoint(start.offset, start.line)):
        if pair.sentence != previous:
            yield Checkpoint(cp.offset, cp.line, previous), Document(pair.sentence, "agrikg")
        previous = pair.sentence


def kdconv_files(path: str | Path) -> list[Path]:
    path = Path(path)
    return sorted(path.rglob("*.json")) if path.is_dir() else [path]


@functools.lru_cache(maxsize=2)
def _load_json(path: Path, mtime_ns: int):
    """A whole JSON file, kept while the next partitions read the same file (not streamable)."""
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def kdconv_dialogue_records(path: str | Path, start: Checkpoint = Checkpoint()):
    """Dialogues of one KdConv file, or of every `*.json` under a directory (sorted); the
    checkpoint is (file index, dialogue index)."""
    for file_index, file in enumerate(kdconv_files(path)):
        if file_index < start.offset:
            continue
        dialogues = _load_json(file, file.stat().st_mtime_ns)
        first = start.line if file_index == start.offset else 0
        for index in range(first, len(dialogues)):
            turns = []
            for message in dialogues[index].get("messages", []):
                attrs = [(a.get("name", ""), a.get("attrname", ""), a.get("attrvalue", ""))
                         for a in message.get("attrs", [])]
                turns.append(KdconvTurn(message.get("message", "").strip(), attrs))
            yield Checkpoint(file_index, index), turns


def kdconv_document_records(path: str | Path, start: Checkpoint = Checkpoint()):
    """Each dialogue as one document, turns joined by newlines."""
    for cp, turns in kdconv_dialogue_records(path, start):
        text = "\n".join(t.text for t in turns if t.text)
        if text:
            yield cp, Document(text, "kdconv")


def kdconv_pair_records(path: str | Path, start: Checkpoint = Checkpoint()):
    """Grounded turns as pairs; the checkpoint's `state` counts the pairs of its dialogue that
    come before the item."""
    skip = int(start.state or 0)
    for cp, turns in kdconv_dialogue_records(path, Checkpoint(start.offset, start.line)):
        for i, pair in enumerate(kdconv_pairs_of_dialogue(turns)):
            if skip:
                skip -= 1
                continue
            yield Checkpoint(cp.offset, cp.line, str(i)), pair


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


def document_records(path: str | Path, fmt: str, start: Checkpoint = Checkpoint(), text_field: str = "text",
                     parse: bool = True):
    """(checkpoint, Document) of a corpus of any format, from `start` on; parse=False may give
    None for the Document where that is cheaper (counting)."""
    if fmt == "text":
        return text_records(path, start)
    if fmt == "jsonl":
        return jsonl_records(path, start, text_field)
    if fmt == "people_daily":
        return people_daily_records(path, start, parse=parse)
    if fmt == "kdconv":
        return kdconv_document_records(path, start)
    if fmt == "agrikg":
        return agrikg_document_records(path, start)
    raise ValueError(f"unknown corpus format {fmt!r}; expected one of {FORMATS}")


def pair_records(path: str | Path, fmt: str, start: Checkpoint = Checkpoint()):
    """(checkpoint, TripleSentence) of a corpus that carries pairs, from `start` on."""
    if fmt == "agrikg":
        return agrikg_records(path, start)
    if fmt == "kdconv":
        return kdconv_pair_records(path, start)
    raise ValueError(f"format {fmt!r} carries no triple-sentence pairs (agrikg and kdconv do)")


def _items(records) -> Iterator:
    return (item for _, item in records)


# -- the plain readers: every item from the start -------------------------------------------------
def read_text(path: str | Path, source: str | None = None) -> Iterator[Document]:
    return _items(text_records(path, source=source))


def read_jsonl(path: str | Path, text_field: str = "text", source: str | None = None) -> Iterator[Document]:
    return _items(jsonl_records(path, text_field=text_field, source=source))


def read_people_daily(path: str | Path, source: str | None = None) -> Iterator[Document]:
    return _items(people_daily_records(path, source=source))


def read_agrikg(path: str | Path) -> Iterator[TripleSentence]:
    return _items(agrikg_records(path))


def read_kdconv_dialogues(path: str | Path) -> Iterator[list[KdconvTurn]]:
    return _items(kdconv_dialogue_records(path))


def read_kdconv(path: str | Path) -> Iterator[Document]:
    return _items(kdconv_document_records(path))


def kdconv_pairs(path: str | Path) -> Iterator[TripleSentence]:
    return _items(kdconv_pair_records(path))


def read_documents(path: str | Path, fmt: str, text_field: str = "text") -> Iterator[Document]:
    return _items(document_records(path, fmt, text_field=text_field))


def read_triple_sentences(path: str | Path, fmt: str) -> Iterator[TripleSentence]:
    return _items(pair_records(path, fmt))
