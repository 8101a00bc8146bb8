"""Streaming import of KB triple files into a TripleStore file.

Formats: KgCLUE `head<TAB>relation<TAB>tail`, NLPCC `head ||| relation ||| tail`, CSV with
named columns (head/relation/tail, subject/predicate/object or entity/attribute/value).
Memory holds only the entity and relation name -> id maps and one batch of rows, never the file.
The store is written to a temporary file beside the target and renamed over it at the end, so a
failed or interrupted import leaves any previous store untouched; so does an import that stores
no triple, or rejects more than `max_rejected_share` of its lines (`ImportRefused`: a wrong
`--format` or a wrong file must not replace a good KB). Temporaries left by killed imports are
removed by the next import of the same store once their process is gone.

Lines end with LF, CRLF or a lone CR; a UTF-8 BOM at the start of a file is dropped; a line with a
NUL character is rejected (no name or value holds one).
"""
from __future__ import annotations

import csv
import json
import logging
import os
import re
import sqlite3
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from glob import escape as glob_escape
from typing import Iterable, Iterator

from wenzhi.kg.names import parse_name

log = logging.getLogger(__name__)

DEFAULT_ALIAS_RELATIONS = (
    "别名", "别称", "又名", "简称", "全称", "中文名", "中文名称", "中文学名", "外文名", "外文名称",
    "英文名", "英文名称", "原名", "本名", "昵称", "绰号", "俗名", "学名", "拉丁学名", "艺名",
    "外号", "also known as",
)
DEFAULT_DESCRIPTION_RELATIONS = ("描述", "简介", "介绍", "概述", "摘要", "Information", "description")
# Alias relation tails often list several names: '小明、明明' or 'A; B'.
_ALIAS_SEPARATORS = str.maketrans({c: "\x00" for c in "、，,;；/／|"})
_MAX_ALIAS_CHARS = 64
_CSV_COLUMNS = (("head", "relation", "tail"), ("subject", "predicate", "object"),
                ("entity", "attribute", "value"))


DEFAULT_MAX_REJECTED_SHARE = 0.1
_BOM = b"\xef\xbb\xbf"
_NEWLINE = re.compile(r"\r\n|\r|\n")
_NEWLINE_BYTES = re.compile(rb"\r\n|\r|\n")


@dataclass
class Rejected:
    file: str
    line: int
    reason: str
    text: str


@dataclass
class ImportSummary:
    db_path: str
    files: list[str]
    lines_read: int = 0
    triples_stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    rejected_examples: list[Rejected] = field(default_factory=list)  # the first few, with line numbers
    rejects_path: str | None = None  # every rejected line, when there were any
    entities: int = 0
    relations: int = 0
    aliases: int = 0
    descriptions: int = 0
    seconds: float = 0.0

    @property
    def reconciles(self) -> bool:
        return self.lines_read == self.triples_stored + self.duplicates + self.rejected

    def to_dict(self) -> dict:
        out = asdict(self)
        out["reconciles"] = self.reconciles
        return out

    def describe(self) -> str:
        lines = [
            f"imported {self.triples_stored:,} triples ({self.entities:,} entities, "
            f"{self.relations:,} relations, {self.aliases:,} aliases, {self.descriptions:,} descriptions) "
            f"into {self.db_path} in {self.seconds:.1f}s",
            f"lines read {self.lines_read:,} = stored {self.triples_stored:,} + duplicates "
            f"{self.duplicates:,} + rejected {self.rejected:,}"
            + ("" if self.reconciles else "  (DOES NOT RECONCILE)"),
        ]
        for reason, n in sorted(self.rejected_by_reason.items(), key=lambda kv: -kv[1]):
            lines.append(f"  rejected {n:,}: {reason}")
        for r in self.rejected_examples[:10]:
            lines.append(f"  {r.file}:{r.line}: {r.reason}: {r.text[:80]!r}")
        if self.rejects_path:
            lines.append(f"  all rejected lines: {self.rejects_path}")
        return "\n".join(lines)


class ImportRefused(ValueError):
    """The import ran but was not stored (the previous store, if any, is left as it was): no triple
    stored, or too many lines rejected. `summary` says what was read."""

    def __init__(self, message: str, summary: "ImportSummary"):
        super().__init__(message)
        self.summary = summary


def detect_format(path: Path) -> str:
    if path.suffix.lower() == ".csv":
        return "csv"
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    if head.startswith(_BOM):
        head = head[len(_BOM):]
    for raw in _NEWLINE_BYTES.split(head):
        line = raw.decode("utf-8", errors="replace")
        if not line.strip():
            continue
        if "|||" in line:
            return "nlpcc"
        if "\t" in line:
            return "kgclue"
        if "," in line:
            return "csv"
        break
    raise ValueError(f"{path}: cannot tell the format (kgclue TSV, nlpcc ' ||| ' or csv); pass --format")


_BLOCK_BYTES = 8 << 20


class _NoProgress:
    def update(self, n: int) -> None:
        pass


def _read_blocks(path: Path, progress=_NoProgress()) -> Iterator[tuple[list[str | None], bool]]:
    """Decoded lines (None for a line that is not UTF-8) in blocks of about 8 MB, and whether the
    block holds a NUL: decoding and splitting a block at once is several times faster than line by
    line in Python. Lines end with LF, CRLF or CR; a BOM at the start of the file is dropped."""
    with open(path, "rb") as fh:
        rest = b""
        first = True
        while True:
            chunk = fh.read(_BLOCK_BYTES)
            if not chunk:
                break
            progress.update(len(chunk))
            chunk = rest + chunk
            if first:
                chunk = chunk[len(_BOM):] if chunk.startswith(_BOM) else chunk
                first = False
            # the last line end, but not a CR that ends the chunk: its LF may come in the next read
            cut = max(chunk.rfind(b"\n"), chunk.rfind(b"\r", 0, len(chunk) - 1)) + 1
            if cut == 0:
                rest = chunk
                continue
            rest = chunk[cut:]
            yield _decode_block(chunk[:cut]), b"\x00" in chunk[:cut]
        if rest:
            yield _decode_block(rest + b"\n"), b"\x00" in rest


def _decode_block(block: bytes) -> list[str | None]:
    """The lines of `block`, which ends with a line end."""
    try:
        text = block.decode("utf-8")
        return (_NEWLINE.split(text) if "\r" in text else text.split("\n"))[:-1]
    except UnicodeDecodeError:
        out: list[str | None] = []
        for raw in _NEWLINE_BYTES.split(block)[:-1]:
            try:
                out.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                out.append(None)
        return out


def _numbered_lines(path: Path, progress=_NoProgress()) -> Iterator[tuple[int, str | None, bool]]:
    """(line number, decoded line or None for bad encoding, whether it may hold a NUL)."""
    lineno = 0
    for lines, has_nul in _read_blocks(path, progress):
        for line in lines:
            lineno += 1
            yield lineno, line, has_nul


_NUL_REASON = "NUL character in the line"


def _iter_rows(path: Path, fmt: str, progress) -> Iterator[tuple[int, tuple | str]]:
    """(line number, (head, relation, tail)) for good lines, (line number, reason) for bad ones."""
    if fmt == "csv":
        yield from _iter_csv_rows(path, progress)
        return
    sep = "\t" if fmt == "kgclue" else "|||"
    lineno = 0
    for lines, has_nul in _read_blocks(path, progress):
        for line in lines:
            lineno += 1
            if line is None:
                yield lineno, "bad encoding (not UTF-8)"
                continue
            if has_nul and "\x00" in line:
                yield lineno, _NUL_REASON
                continue
            parts = line.split(sep)
            if len(parts) == 3:
                h, r, t = parts[0].strip(), parts[1].strip(), parts[2].strip()
                if h and r and t:
                    yield lineno, (h, r, t)
                else:
                    yield lineno, "empty field"
            elif not line.strip():
                yield lineno, "empty line"
            else:
                yield lineno, f"expected 3 fields separated by {sep!r}, got {len(parts)}"


def _iter_csv_rows(path: Path, progress) -> Iterator[tuple[int, tuple | str]]:
    bad_lines: dict[int, str] = {}

    def decoded() -> Iterator[str]:
        for lineno, line, has_nul in _numbered_lines(path, progress):
            if line is None:
                bad_lines[lineno] = "bad encoding (not UTF-8)"
                line = ""  # keeps csv's line numbering; reported below
            elif has_nul and "\x00" in line:
                bad_lines[lineno] = _NUL_REASON
                line = ""
            yield line

    reader = csv.reader(decoded())
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise ValueError(f"{path}: unreadable CSV header: {exc}") from None
    if header is None:
        return
    lowered = [h.strip().lower() for h in header]
    for names in _CSV_COLUMNS:
        if all(n in lowered for n in names):
            idx = [lowered.index(n) for n in names]
            break
    else:
        raise ValueError(f"{path}: CSV header {header} names no head/relation/tail columns")
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # e.g. a field over csv's size limit: that line, not the import
            yield reader.line_num, f"bad CSV: {exc}"
            continue
        lineno = reader.line_num
        if lineno in bad_lines:
            yield lineno, bad_lines[lineno]
        elif not row or not any(c.strip() for c in row):
            yield lineno, "empty line"
        elif len(row) != len(header):
            yield lineno, f"expected {len(header)} CSV columns, got {len(row)}"
        else:
            h, r, t = (row[i].strip() for i in idx)
            yield (lineno, (h, r, t)) if (h and r and t) else (lineno, "empty field")


def split_aliases(tail: str) -> list[str]:
    out = []
    for piece in tail.translate(_ALIAS_SEPARATORS).split("\x00"):
        piece = piece.strip()
        if piece and len(piece) <= _MAX_ALIAS_CHARS:
            out.append(piece)
    return out


_SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
CREATE TABLE relations(id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE triples(head_id INTEGER NOT NULL, rel_id INTEGER NOT NULL, tail TEXT NOT NULL,
                     PRIMARY KEY(head_id, rel_id, tail)) WITHOUT ROWID;
CREATE TABLE aliases(entity_id INTEGER NOT NULL, alias TEXT NOT NULL,
                     PRIMARY KEY(entity_id, alias)) WITHOUT ROWID;
CREATE TABLE entities(id INTEGER PRIMARY KEY, name TEXT NOT NULL, base TEXT NOT NULL,
                      disambiguation TEXT, description TEXT, n_triples INTEGER NOT NULL DEFAULT 0);
"""


def import_files(
    files: Iterable[str | Path],
    db_path: str | Path,
    fmt: str = "auto",
    alias_relations: Iterable[str] = DEFAULT_ALIAS_RELATIONS,
    description_relations: Iterable[str] = DEFAULT_DESCRIPTION_RELATIONS,
    progress: bool = False,
    batch_size: int = 200_000,
    max_examples: int = 100,
    max_rejected_share: float = DEFAULT_MAX_REJECTED_SHARE,
) -> ImportSummary:
    """Import triple files into a new store at `db_path`, replacing an old one only on success:
    at least one triple stored and at most `max_rejected_share` of the lines rejected (else
    `ImportRefused`, with every rejected line in `<db>.refused.tsv`)."""
    files = [Path(f) for f in files]
    if not files:
        raise ValueError("no input files")
    for f in files:
        if not f.exists():
            raise FileNotFoundError(f"no such KB file: {f}")
        if f.is_dir():
            raise IsADirectoryError(f"{f} is a directory, not a KB file")
        if f.stat().st_size == 0:
            raise ValueError(f"{f} is empty: nothing to import")
    if fmt not in ("auto", "kgclue", "nlpcc", "csv"):
        raise ValueError(f"unknown format {fmt!r}: use auto, kgclue, nlpcc or csv")
    if not 0.0 <= max_rejected_share <= 1.0:
        raise ValueError(f"max_rejected_share must be between 0 and 1, got {max_rejected_share}")
    db_path = Path(db_path)
    if db_path.is_dir():
        raise IsADirectoryError(f"{db_path} is a directory: give the store's file name (e.g. {db_path}/kb.sqlite)")
    db_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = db_path.with_name(f".{db_path.name}.tmp-{os.getpid()}")
    rejects_path = db_path.with_name(db_path.name + ".rejected.tsv")
    rejects_tmp = rejects_path.with_name(f".{rejects_path.name}.tmp-{os.getpid()}")
    refused_path = db_path.with_name(db_path.name + ".refused.tsv")
    _remove_stale_temporaries(tmp, rejects_tmp)
    summary = ImportSummary(db_path=str(db_path), files=[str(f) for f in files])
    try:
        _import(files, tmp, rejects_tmp, fmt, set(alias_relations), set(description_relations),
                progress, batch_size, max_examples, summary)
        refusal = _refusal(summary, max_rejected_share)
        if refusal:
            tmp.unlink()
            os.replace(rejects_tmp, refused_path)
            raise ImportRefused(f"{refusal}; {db_path} is left as it was (every rejected line: {refused_path})",
                                summary)
        refused_path.unlink(missing_ok=True)
        os.replace(tmp, db_path)
        if summary.rejected:
            os.replace(rejects_tmp, rejects_path)
            summary.rejects_path = str(rejects_path)
        else:
            rejects_tmp.unlink(missing_ok=True)
            rejects_path.unlink(missing_ok=True)  # a stale list would describe an older import
    except BaseException:
        tmp.unlink(missing_ok=True)
        rejects_tmp.unlink(missing_ok=True)
        raise
    return summary


def _refusal(summary: ImportSummary, max_rejected_share: float) -> str | None:
    """Why the import must not replace the store, or None."""
    if summary.triples_stored == 0:
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(summary.rejected_by_reason.items(), key=lambda kv: -kv[1])[:3])
        return f"no triple stored from {summary.lines_read} lines ({reasons or 'no lines'}): wrong file or --format?"
    if summary.lines_read and summary.rejected / summary.lines_read > max_rejected_share:
        return (f"{summary.rejected} of {summary.lines_read} lines rejected, over the allowed share of "
                f"{max_rejected_share:g} (--max-rejected-share)")
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's: alive
        return True
    return True


def _remove_stale_temporaries(*mine: Path) -> None:
    """Remove this process's leftovers and those of earlier imports of the same store whose
    process is gone (killed mid-import); a live process's temporaries are its own."""
    for path in mine:
        prefix = path.name.rsplit("-", 1)[0] + "-"
        for candidate in path.parent.glob(glob_escape(prefix) + "*"):
            pid = candidate.name[len(prefix):]
            if pid.isdigit() and (int(pid) == os.getpid() or not _pid_alive(int(pid))):
                log.info("removing %s, left by an interrupted import", candidate)
                candidate.unlink(missing_ok=True)


def _import(files, tmp, rejects_tmp, fmt, alias_rels, desc_rels, progress, batch_size,
            max_examples, summary: ImportSummary) -> None:
    from tqdm import tqdm

    start = time.perf_counter()
    conn = sqlite3.connect(tmp)
    # Nothing to protect inside a temporary file: a crash just discards it, so skip the journal.
    conn.executescript(
        "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA locking_mode=EXCLUSIVE;"
        "PRAGMA cache_size=-262144; PRAGMA temp_store=FILE;"
    )
    conn.executescript(_SCHEMA)
    entity_ids: dict[str, int] = {}
    relation_ids: dict[str, int] = {}
    described: set[int] = set()
    total_bytes = sum(f.stat().st_size for f in files)
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="kg import", disable=not progress)
    triples: list[tuple[int, int, str]] = []
    aliases: list[tuple[int, str]] = []
    insert_triples = "INSERT OR IGNORE INTO triples VALUES (?, ?, ?)"
    insert_aliases = "INSERT OR IGNORE INTO aliases VALUES (?, ?)"

    def flush() -> None:
        before = conn.total_changes
        conn.executemany(insert_triples, triples)
        stored = conn.total_changes - before
        summary.triples_stored += stored
        summary.duplicates += len(triples) - stored
        triples.clear()
        conn.executemany(insert_aliases, aliases)
        aliases.clear()

    with open(rejects_tmp, "w", encoding="utf-8") as rejects:
        rejects.write("file\tline\treason\n")
        for path in files:
            file_fmt = detect_format(path) if fmt == "auto" else fmt
            log.info("importing %s as %s", path, file_fmt)
            for lineno, row in _iter_rows(path, file_fmt, bar):
                summary.lines_read += 1
                if type(row) is str:  # a rejection reason
                    summary.rejected += 1
                    summary.rejected_by_reason[row] = summary.rejected_by_reason.get(row, 0) + 1
                    rejects.write(f"{path}\t{lineno}\t{row}\n")
                    if len(summary.rejected_examples) < max_examples:
                        summary.rejected_examples.append(Rejected(str(path), lineno, row, ""))
                    continue
                head, rel, tail = row
                head_id = entity_ids.get(head)
                if head_id is None:
                    head_id = entity_ids[head] = len(entity_ids) + 1
                rel_id = relation_ids.get(rel)
                if rel_id is None:
                    rel_id = relation_ids[rel] = len(relation_ids) + 1
                triples.append((head_id, rel_id, tail))
                if rel in alias_rels:
                    aliases.extend((head_id, a) for a in split_aliases(tail))
                elif rel in desc_rels:
                    described.add(head_id)
                if len(triples) >= batch_size:
                    flush()
        flush()
    bar.close()
    _attach_line_text(summary)
    _finish(conn, entity_ids, relation_ids, described, desc_rels, alias_rels, summary, progress)
    summary.seconds = time.perf_counter() - start
    conn.execute("INSERT INTO meta VALUES ('import_summary', ?)", (json.dumps(summary.to_dict(), ensure_ascii=False),))
    conn.commit()
    conn.close()


def _attach_line_text(summary: ImportSummary) -> None:
    """Fill in the text of the first rejected lines (read again: they are few)."""
    wanted: dict[str, dict[int, Rejected]] = {}
    for r in summary.rejected_examples:
        wanted.setdefault(r.file, {})[r.line] = r
    for file, by_line in wanted.items():
        last = max(by_line)
        for lineno, line, _ in _numbered_lines(Path(file)):
            if lineno in by_line:
                by_line[lineno].text = ("(not UTF-8)" if line is None else line)[:200]
            if lineno >= last:
                break


def _finish(conn, entity_ids, relation_ids, described, desc_rels, alias_rels, summary, progress) -> None:
    """Write entities and relations, counts, descriptions and the secondary indexes."""
    from tqdm import tqdm

    steps = tqdm(total=5, desc="kg index", disable=not progress)
    conn.executemany("INSERT INTO relations VALUES (?, ?)", ((i, n) for n, i in relation_ids.items()))
    counts = dict(conn.execute("SELECT head_id, COUNT(*) FROM triples GROUP BY head_id"))
    steps.update()

    def rows():
        for name, i in entity_ids.items():
            base, disambiguation = parse_name(name)
            yield i, name, base, disambiguation, None, counts.get(i, 0)

    conn.executemany("INSERT INTO entities VALUES (?, ?, ?, ?, ?, ?)", rows())
    del counts
    steps.update()
    desc_ids = [relation_ids[r] for r in desc_rels if r in relation_ids]
    if described and desc_ids:
        marks = ",".join("?" * len(desc_ids))
        conn.execute("CREATE TEMP TABLE described(id INTEGER PRIMARY KEY)")
        conn.executemany("INSERT INTO described VALUES (?)", ((i,) for i in sorted(described)))
        # The longest long-text tail is the description (short '简介' values are often labels).
        conn.execute(
            f"UPDATE entities SET description = (SELECT tail FROM triples t WHERE t.head_id = entities.id "
            f"AND t.rel_id IN ({marks}) ORDER BY length(t.tail) DESC LIMIT 1) "
            f"WHERE id IN (SELECT id FROM described)",
            desc_ids,
        )
    steps.update()
    conn.execute("CREATE UNIQUE INDEX entities_name ON entities(name)")
    conn.execute("CREATE INDEX entities_base ON entities(base)")
    steps.update()
    conn.execute("CREATE INDEX triples_tail ON triples(tail)")
    steps.update()
    steps.close()
    summary.entities = len(entity_ids)
    summary.relations = len(relation_ids)
    summary.aliases = conn.execute("SELECT COUNT(*) FROM aliases").fetchone()[0]
    summary.descriptions = len(described)
    config = {"alias_relations": sorted(alias_rels), "description_relations": sorted(desc_rels)}
    conn.executemany(
        "INSERT INTO meta VALUES (?, ?)",
        [("fingerprint", f"{uuid.uuid4().hex}-{int(time.time())}"),
         ("config", json.dumps(config, ensure_ascii=False)),
         ("schema_version", "1")],
    )
