"""`wenzhi kg import` against bad input (issue 13): an import that stores nothing, or rejects too
many lines, fails and leaves the existing store as it was; stale temporaries of killed imports
are removed; BOMs, NULs and CR-only line ends are handled; bad paths are messages, not
tracebacks."""
import os
import subprocess
import sys

import pytest

import wenzhi.cli as wenzhi
from wenzhi.kg import TripleStore


@pytest.fixture()
def good_store(tmp_path, kb_slice_path):
    db = tmp_path / "good.sqlite"
    TripleStore.import_files([kb_slice_path], db)
    with TripleStore(db) as store:
        stats = store.stats()
    return db, stats


def _fingerprint(db):
    with TripleStore(db) as store:
        return store.stats()["fingerprint"], store.stats()["triples"]


def test_an_import_that_stores_nothing_fails_and_keeps_the_store(good_store, tmp_path, capsys):
    db, before = good_store
    bad = tmp_path / "x.txt"
    bad.write_text("a b c\n", encoding="utf-8")
    size = db.stat().st_size
    assert wenzhi.main(["kg", "import", str(bad), "--format", "kgclue", "--kb", str(db), "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert "no triple" in err and "left as it was" in err
    assert db.stat().st_size == size and _fingerprint(db) == (before["fingerprint"], before["triples"])
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_too_many_rejected_lines_fail_unless_allowed(good_store, tmp_path, kb_slice_path, capsys):
    db, before = good_store
    with open(kb_slice_path, encoding="utf-8") as fh:
        good = [next(fh) for _ in range(100)]
    mixed = tmp_path / "mixed.txt"
    mixed.write_text("".join(good) + "only two\tfields\n" * 40, encoding="utf-8")  # 29% rejected
    assert wenzhi.main(["kg", "import", str(mixed), "--kb", str(db), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "40 of 140 lines rejected" in err and "--max-rejected-share" in err
    assert _fingerprint(db) == (before["fingerprint"], before["triples"])
    assert wenzhi.main(["kg", "import", str(mixed), "--kb", str(db), "--no-progress",
                        "--max-rejected-share", "0.5"]) == 0
    assert _fingerprint(db)[1] == 100


def test_stale_temporaries_of_dead_imports_are_removed(tmp_path, kb_slice_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    db = tmp_path / "kb.sqlite"
    stale = [tmp_path / f".kb.sqlite.tmp-{dead.pid}", tmp_path / f".kb.sqlite.rejected.tsv.tmp-{dead.pid}"]
    alive = tmp_path / f".kb.sqlite.tmp-{os.getppid()}"  # an import still running elsewhere
    other = tmp_path / f".other.sqlite.tmp-{dead.pid}"  # another store's: not ours to judge
    for p in (*stale, alive, other):
        p.write_bytes(b"partial")
    TripleStore.import_files([kb_slice_path], db)
    assert not any(p.exists() for p in stale)
    assert alive.exists() and other.exists()


def test_bom_nul_and_cr_only_files(tmp_path):
    bom = tmp_path / "bom.txt"
    bom.write_bytes("\ufeff龙编站\t坐标\t21°N\n龙编站\t类型\t车站\n".encode("utf-8"))
    s = TripleStore.import_files([bom], tmp_path / "bom.sqlite")
    assert s.triples_stored == 2
    with TripleStore(tmp_path / "bom.sqlite") as store:
        assert store.entity_by_name("龙编站") is not None
        assert all("\ufeff" not in e.name for e in store.iter_entities())

    nul = tmp_path / "nul.txt"
    nul.write_bytes("好\x00人\t职业\t医生\n好人\t职业\t医生\n好人\t别名\t善\x00人\n".encode("utf-8"))
    s = TripleStore.import_files([nul], tmp_path / "nul.sqlite", max_rejected_share=1.0)
    assert s.triples_stored == 1 and s.rejected == 2 and s.reconciles
    assert {r.line for r in s.rejected_examples} == {1, 3}
    assert all("NUL" in r.reason for r in s.rejected_examples)

    cr = tmp_path / "cr.txt"
    cr.write_bytes("甲\t关系\t一\r乙\t关系\t二\r丙\t关系\t三\r".encode("utf-8"))
    s = TripleStore.import_files([cr], tmp_path / "cr.sqlite")
    assert s.lines_read == 3 and s.triples_stored == 3

    crlf_csv = tmp_path / "kb.csv"
    crlf_csv.write_bytes("\ufeffhead,relation,tail\r甲,关系,一\r乙,关系,\"二,三\"\r".encode("utf-8"))
    s = TripleStore.import_files([crlf_csv], tmp_path / "csv.sqlite")
    assert s.lines_read == 2 and s.triples_stored == 2


@pytest.mark.parametrize("case", ["directory", "missing", "empty", "db is a directory", "blank lines only"])
def test_bad_paths_are_messages_not_tracebacks(case, tmp_path, kb_slice_path, capsys):
    src, db = kb_slice_path, tmp_path / "kb.sqlite"
    if case == "directory":
        src = tmp_path / "adir"
        src.mkdir()
    elif case == "missing":
        src = tmp_path / "nope.txt"
    elif case == "empty":
        src = tmp_path / "empty.txt"
        src.write_bytes(b"")
    elif case == "blank lines only":
        src = tmp_path / "blank.txt"
        src.write_bytes(b"\n\n\n")
    else:
        db = tmp_path / "dbdir"
        db.mkdir()
    code = wenzhi.main(["kg", "import", str(src), "--kb", str(db), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("wenzhi kg import: ") and str(src if case != "db is a directory" else db) in err
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_a_refused_connection_to_a_search_cluster_is_a_message(kb_db):
    for argv in (["index", "bm25", "--kind", "entities", "--kb", str(kb_db), "--limit", "10"],
                 ["index", "bm25-search", "龙编站"]):
        proc = subprocess.run([sys.executable, "-m", "wenzhi", *argv, "--url", "http://127.0.0.1:9"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "127.0.0.1:9" in proc.stderr and "Connection refused" in proc.stderr
        assert "Traceback" not in proc.stderr
