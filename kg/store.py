"""TripleStore: an embedded, file-backed (SQLite) store of KB triples, entities and aliases.

Schema (written by kg.importer):
  entities(id, name, base, disambiguation, description, n_triples)   indexed by name and base
  relations(id, name)
  triples(head_id, rel_id, tail)   clustered on (head_id, rel_id, tail), indexed by tail
  aliases(entity_id, alias)        aliases from alias relations (the base name is implicit)
  meta(key, value)                 import summary, configuration and a fingerprint
"""
from __future__ import annotations

import itertools
import json
import operator
import sqlite3
from functools import lru_cache
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator


@dataclass(frozen=True, slots=True)
class Entity:
    id: int
    name: str  # the full KB head, e.g. '守望星光（韩玉玲、刘东考演唱歌曲）'
    base: str
    disambiguation: str | None
    description: str | None
    n_triples: int = 0


@dataclass(frozen=True, slots=True)
class Triple:
    head: str
    relation: str
    tail: str
    head_id: int


_ENTITY_COLUMNS = "id, name, base, disambiguation, description, n_triples"
_TRIPLE_SELECT = (
    "SELECT e.name, r.name, t.tail, t.head_id FROM triples t "
    "JOIN entities e ON e.id = t.head_id JOIN relations r ON r.id = t.rel_id "
)


# ids per query of the batched reads: well under SQLite's bound on parameters (999 before 3.32)
_BATCH = 900
_SIZES = (8, 32, 128, 512, _BATCH)


def _chunks(ids: Iterable[int]) -> Iterator[tuple[list[int], str]]:
    """(ids, "?,?,...") per query. The id lists are padded (repeating their last id) to a few
    sizes, so the statements are a few texts that sqlite3's statement cache keeps compiled
    rather than one new statement per number of ids."""
    ids = list(ids)
    for i in range(0, len(ids), _BATCH):
        chunk = ids[i : i + _BATCH]
        size = next(n for n in _SIZES if n >= len(chunk))
        chunk += chunk[-1:] * (size - len(chunk))
        yield chunk, _MARKS[size]


_MARKS = {n: ",".join("?" * n) for n in _SIZES}


class TripleStore:
    """Read access to a store written by `TripleStore.import_files`.

    Opened read-only, so several processes (CLI, service workers) can share one file.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(
                f"no triple store at {self.path}: create one with `wenzhi kg import FILE --kb {self.path}`"
            )
        self._conn = sqlite3.connect(
            f"file:{self.path.resolve()}?mode=ro", uri=True, check_same_thread=False
        )
        self._conn.execute("PRAGMA query_only=ON")
        self._meta = dict(self._conn.execute("SELECT key, value FROM meta"))
        self._relation_names: dict[int, str] | None = None
        # the store never changes once opened: a head's triples are read once (the linker's entity
        # features and the QA pipeline's candidate relations ask for the same heads)
        self._head_triples = lru_cache(maxsize=100_000)(self._read_head_triples)

    # -- import ---------------------------------------------------------------------------
    @staticmethod
    def import_files(files, db_path, fmt: str = "auto", **options):
        """Stream `files` into a new store at `db_path` (atomically replacing any old one).

        Returns an `ImportSummary`; see `kg.importer.import_files` for the options."""
        from wenzhi.kg.importer import import_files

        return import_files(files, db_path, fmt=fmt, **options)

    # -- entities -------------------------------------------------------------------------
    @staticmethod
    def _entity(row) -> Entity | None:
        return Entity(*row) if row else None

    def entity(self, entity_id: int) -> Entity | None:
        row = self._conn.execute(
            f"SELECT {_ENTITY_COLUMNS} FROM entities WHERE id = ?", (entity_id,)
        ).fetchone()
        return self._entity(row)

    def entities(self, entity_ids: Iterable[int]) -> dict[int, Entity]:
        """Entities by id, absent ids left out: one query per `_BATCH` ids rather than one per id
        (the linker fetches every entity a batch of texts mentions at once)."""
        out = {}
        for chunk, marks in _chunks(entity_ids):
            for row in self._conn.execute(f"SELECT {_ENTITY_COLUMNS} FROM entities WHERE id IN ({marks})", chunk):
                out[row[0]] = Entity(*row)
        return out

    def entity_by_name(self, full_name: str) -> Entity | None:
        row = self._conn.execute(
            f"SELECT {_ENTITY_COLUMNS} FROM entities WHERE name = ?", (full_name.strip(),)
        ).fetchone()
        return self._entity(row)

    def entities_by_base(self, base: str) -> list[Entity]:
        """Homonyms sharing a base name, the most described (most triples) first."""
        rows = self._conn.execute(
            f"SELECT {_ENTITY_COLUMNS} FROM entities WHERE base = ? ORDER BY n_triples DESC, id",
            (base.strip(),),
        )
        return [Entity(*r) for r in rows]

    def n_entities(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM entities").fetchone()[0]

    def max_entity_id(self) -> int:
        return self._conn.execute("SELECT COALESCE(MAX(id), 0) FROM entities").fetchone()[0]

    def iter_entity_context(self, description_chars: int) -> Iterator[tuple[int, str | None, str | None]]:
        """(id, disambiguation, the description's first `description_chars` characters) of every
        entity, in id order (what the linker's feature table needs of it)."""
        return iter(self._conn.execute("SELECT id, disambiguation, substr(description, 1, ?) FROM entities ORDER BY id",
                                       (description_chars,)))

    def iter_entities(self) -> Iterator[Entity]:
        for row in self._conn.execute(f"SELECT {_ENTITY_COLUMNS} FROM entities ORDER BY id"):
            yield Entity(*row)

    def aliases(self, entity_id: int) -> list[str]:
        """The base name first, then aliases taken from alias relations."""
        entity = self.entity(entity_id)
        if entity is None:
            return []
        out = [entity.base]
        for (alias,) in self._conn.execute(
            "SELECT alias FROM aliases WHERE entity_id = ? ORDER BY alias", (entity_id,)
        ):
            if alias not in out:
                out.append(alias)
        return out

    def iter_aliases(self) -> Iterator[tuple[int, str]]:
        """(entity id, alias) for every alias-relation alias (base names are not repeated here)."""
        yield from self._conn.execute("SELECT entity_id, alias FROM aliases")

    # -- triples --------------------------------------------------------------------------
    def triples(self, entity_id: int, relation: str | None = None) -> list[Triple]:
        if relation is None:
            return list(self._head_triples(entity_id))
        rows = self._conn.execute(
            _TRIPLE_SELECT + "WHERE t.head_id = ? AND r.name = ?", (entity_id, relation)
        )
        return [Triple(*r) for r in rows]

    def relations_and_tails(self, entity_ids: Iterable[int], limit: int | None = None) -> dict[int, list[tuple[str, str]]]:
        """(relation, tail) of each head's first `limit` triples, in `triples()`'s order (relation
        id, tail), for many heads in one query per `_BATCH`; heads without triples are left out."""
        names = self.relation_names()
        return {head: [(names[rel_id], tail) for _, rel_id, tail in rows]
                for head, rows in self.triple_rows(entity_ids, limit).items()}

    def triple_rows(self, entity_ids: Iterable[int], limit: int | None = None) -> dict[int, list[tuple[int, int, str]]]:
        """(head id, relation id, tail) rows of each head's first `limit` triples, as
        `relations_and_tails` orders and cuts them: the rows as SQLite gives them, no per-row
        Python (what the linker's entity features read: relation ids map to names once per
        distinct set, see `relation_names`)."""
        out: dict[int, list[tuple[int, int, str]]] = {}
        for chunk, marks in _chunks(entity_ids):
            rows = self._conn.execute(
                f"SELECT head_id, rel_id, tail FROM triples WHERE head_id IN ({marks}) ORDER BY head_id, rel_id, tail",
                chunk)
            for head_id, group in itertools.groupby(rows, operator.itemgetter(0)):
                out[head_id] = list(itertools.islice(group, limit))
        return out

    def _read_head_triples(self, entity_id: int) -> tuple[Triple, ...]:
        # The head's name read once and the relation names from `relation_names()`: cached
        # triples share those string objects rather than holding a copy of each per row.
        names = self.relation_names()
        rows = self._conn.execute("SELECT rel_id, tail FROM triples WHERE head_id = ? ORDER BY rel_id, tail",
                                  (entity_id,)).fetchall()
        if not rows:
            return ()
        head = self._conn.execute("SELECT name FROM entities WHERE id = ?", (entity_id,)).fetchone()
        if head is None:  # a triple whose head is missing: the join of `triples(id, relation)` drops it too
            return ()
        return tuple(Triple(head[0], names[rel_id], tail, entity_id) for rel_id, tail in rows)

    def triples_by_tail(self, tail: str) -> list[Triple]:
        rows = self._conn.execute(_TRIPLE_SELECT + "WHERE t.tail = ?", (tail.strip(),))
        return [Triple(*r) for r in rows]

    def iter_triples(self) -> Iterator[Triple]:
        names = self.relation_names()
        cur = self._conn.execute(
            "SELECT e.name, t.rel_id, t.tail, t.head_id FROM triples t JOIN entities e ON e.id = t.head_id"
        )
        for head, rel_id, tail, head_id in cur:
            yield Triple(head, names[rel_id], tail, head_id)

    def iter_head_summaries(self, min_chars: int, max_chars: int, separator: str):
        """(head id, number of triples, whether a tail holds `separator`, its distinct relation ids
        joined by ",", its tails of `min_chars` to `max_chars` characters joined by `separator` or
        None) per head, in head order: one aggregate query, no Python per triple."""
        return iter(self._conn.execute(
            "SELECT head_id, COUNT(*), MAX(instr(tail, ?)) > 0, group_concat(DISTINCT rel_id), "
            "group_concat(CASE WHEN length(tail) BETWEEN ? AND ? THEN tail END, ?) "
            "FROM triples GROUP BY head_id ORDER BY head_id", (separator, min_chars, max_chars, separator)))

    def relation_names(self) -> dict[int, str]:
        if self._relation_names is None:
            self._relation_names = dict(self._conn.execute("SELECT id, name FROM relations"))
        return self._relation_names

    def relation_counts(self) -> list[tuple[str, int]]:
        """(relation, number of triples), most frequent first."""
        names = self.relation_names()
        rows = self._conn.execute(
            "SELECT rel_id, COUNT(*) AS n FROM triples GROUP BY rel_id ORDER BY n DESC"
        )
        return [(names[rel_id], n) for rel_id, n in rows]

    # -- bookkeeping ----------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """Changes with every import: derived files (the alias index) are keyed by it."""
        return self._meta["fingerprint"]

    @property
    def config(self) -> dict:
        return json.loads(self._meta.get("config", "{}"))

    def stats(self) -> dict:
        one = lambda sql: self._conn.execute(sql).fetchone()[0]  # noqa: E731
        return {
            "path": str(self.path),
            "bytes": self.path.stat().st_size,
            "entities": one("SELECT COUNT(*) FROM entities"),
            "triples": one("SELECT COUNT(*) FROM triples"),
            "relations": one("SELECT COUNT(*) FROM relations"),
            "aliases": one("SELECT COUNT(*) FROM aliases"),
            "entities_with_description": one(
                "SELECT COUNT(*) FROM entities WHERE description IS NOT NULL"
            ),
            "homonym_bases": one(
                "SELECT COUNT(*) FROM (SELECT base FROM entities GROUP BY base HAVING COUNT(*) > 1)"
            ),
            "fingerprint": self.fingerprint,
            "import": json.loads(self._meta.get("import_summary", "{}")),
        }

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "TripleStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
