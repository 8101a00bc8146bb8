"""Documents of three kinds, built from the kg store and from text corpora.

- entity:  title = full KB head, aliases, text = disambiguation + description
- triple:  title = head, text = "head relation tail", fields carry the ids
- passage: title = article title, text = a paragraph (e.g. CMRC 2018, SQuAD format)
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

KINDS = ("entity", "triple", "passage")
#: the CLI says `--kind entities|triples|passages`
KIND_BY_PLURAL = {"entities": "entity", "triples": "triple", "passages": "passage"}


@dataclass
class Document:
    id: str
    kind: str
    title: str
    text: str
    aliases: list[str] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)  # kind-specific payload, returned with hits

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"document {self.id!r}: kind {self.kind!r} is not one of {KINDS}")

    def embedding_text(self) -> str:
        """What a dense encoder reads: the title, then aliases, then the text."""
        parts = [self.title, *self.aliases, self.text] if self.kind == "entity" else [self.title, self.text]
        return " ".join(p for p in dict.fromkeys(parts) if p)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str) -> "Document":
        return cls(**json.loads(line))


def passages_from_squad(paths: Iterable[str | Path]) -> Iterator[Document]:
    """Paragraphs of SQuAD-format files (CMRC 2018); the id is the paragraph id of the file."""
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        for article in data["data"]:
            title = article.get("title", "")
            for para in article["paragraphs"]:
                yield Document(
                    id=f"passage:{para['id']}",
                    kind="passage",
                    title=title,
                    text=para["context"],
                    fields={"source": Path(path).name},
                )


def entity_documents(store) -> Iterator[Document]:
    """One document per KB entity of a kg.TripleStore."""
    for ent in store.iter_entities():
        aliases = [a for a in store.aliases(ent.id) if a != ent.name]
        text = " ".join(p for p in (ent.disambiguation, ent.description) if p)
        yield Document(
            id=f"entity:{ent.id}",
            kind="entity",
            title=ent.name,
            text=text,
            aliases=aliases,
            fields={"entity_id": ent.id, "base": ent.base, "disambiguation": ent.disambiguation},
        )


def triple_id(head: str, relation: str, tail: str) -> str:
    # Stable across re-imports of the same KB, unlike a row number.
    digest = hashlib.blake2b(f"{head}\t{relation}\t{tail}".encode(), digest_size=8).hexdigest()
    return f"triple:{digest}"


def triple_documents(store) -> Iterator[Document]:
    """One document per KB triple, as the text `head relation tail`."""
    for t in store.iter_triples():
        yield Document(
            id=triple_id(t.head, t.relation, t.tail),
            kind="triple",
            title=t.head,
            text=f"{t.head} {t.relation} {t.tail}",
            fields={"head": t.head, "relation": t.relation, "tail": t.tail, "head_id": t.head_id},
        )


def documents_for(kind: str, db: str | Path | None = None, sources: Iterable[str | Path] | None = None) -> Iterator[Document]:
    """The documents of `kind` ('entity'/'entities', ...): from the store at `db` or from
    SQuAD-format `sources` (default: the CMRC 2018 files of the data directory)."""
    kind = KIND_BY_PLURAL.get(kind, kind)
    if kind == "passage":
        if not sources:
            from wenzhi.kg.datadir import data_path

            sources = sorted(data_path("cmrc2018").glob("*.json"))
        yield from passages_from_squad(sources)
        return
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}: choose entities, triples or passages")
    if db is None:
        raise ValueError(f"documents of kind {kind!r} come from a KB store: give --kb (made by `wenzhi kg import`)")
    if not Path(db).exists():
        raise FileNotFoundError(f"no KB store at {db}: run `wenzhi kg import KNOWLEDGE.txt --kb {db}` first")
    from wenzhi.kg import TripleStore

    store = TripleStore(db)
    try:
        yield from (entity_documents(store) if kind == "entity" else triple_documents(store))
    finally:
        store.close()
