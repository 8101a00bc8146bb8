"""TripleStore: parsing names, streaming import (formats, malformed lines, atomicity), queries."""
from __future__ import annotations

import csv
import sqlite3

import pytest

from wenzhi.kg import TripleStore, normalize, parse_name
from wenzhi.kg.names import normalize_with_offsets


def test_parse_name_suffixes():
    assert parse_name("守望星光（韩玉玲、刘东考演唱歌曲）") == ("守望星光", "韩玉玲、刘东考演唱歌曲")
    assert parse_name("机械设计基础(2010年高等教育出版社出版作者杨可桢)") == (
        "机械设计基础", "2010年高等教育出版社出版作者杨可桢")
    assert parse_name("龙编站") == ("龙编站", None)
    # a leading bracket is part of the name, not a disambiguation
    assert parse_name("(+)-二异松蒎基氯硼烷") == ("(+)-二异松蒎基氯硼烷", None)
    # nested: split at the outer group
    assert parse_name("年兽大作战（游戏《三国杀online》中的模式）")[0] == "年兽大作战"
    assert parse_name("A（B（C））") == ("A", "B（C）")
    assert parse_name("（只有括号）") == ("（只有括号）", None)


def test_normalize_width_script_case_space():
    assert normalize("劉曉華 主要講什麼課") == "刘晓华主要讲什么课"
    assert normalize("ＡＢＣ　ｄｅｆ") == "abcdef"
    assert normalize("B2M Entertainment") == "b2mentertainment"
    text = " 劉 曉華？"
    norm, offsets = normalize_with_offsets(text)
    assert norm == "刘晓华?"
    assert [offsets[i] for i in range(len(norm))] == [1, 3, 4, 5]


def _count_lines(path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for _ in fh)


def test_slice_import_reconciles(kb_db, kb_slice_path, kb_store):
    stats = kb_store.stats()
    summary = stats["import"]
    assert summary["lines_read"] == _count_lines(kb_slice_path)
    assert summary["reconciles"]
    assert stats["triples"] == summary["triples_stored"] > 5000
    assert stats["entities"] > 1000 and stats["homonym_bases"] > 10
    assert kb_store.relation_counts()[0][1] >= kb_store.relation_counts()[-1][1]


def test_malformed_lines_are_counted_with_line_numbers(tmp_path, kb_slice_path):
    with open(kb_slice_path, "rb") as fh:
        real = [next(fh) for _ in range(300)]
    bad = {
        3: b"only-two\tfields\n",
        10: b"four\tfields\there\textra\n",
        20: b"\trelation-without-head\ttail\n",
        30: b"bad\tencoding\t\xff\xfe\xfa\n",
        40: b"\n",
    }
    lines, real_iter, numbers = [], iter(real), {}
    for lineno in range(1, 307):
        if lineno in bad:
            lines.append(bad[lineno])
        elif lineno == 306:
            lines.append(real[0])  # a duplicate of line 1
        else:
            lines.append(next(real_iter))
    path = tmp_path / "mixed.txt"
    path.write_bytes(b"".join(lines))
    db = tmp_path / "mixed.sqlite"
    summary = TripleStore.import_files([path], db)
    assert summary.lines_read == 306
    assert summary.rejected == 5 and summary.duplicates == 1
    assert summary.triples_stored == 300
    assert summary.reconciles
    by_line = {r.line: r.reason for r in summary.rejected_examples}
    assert set(by_line) == set(bad)
    assert "got 2" in by_line[3] and "got 4" in by_line[10]
    assert by_line[20] == "empty field" and "encoding" in by_line[30] and by_line[40] == "empty line"
    assert "relation-without-head" in next(r.text for r in summary.rejected_examples if r.line == 20)
    rejects = (tmp_path / "mixed.sqlite.rejected.tsv").read_text(encoding="utf-8").splitlines()
    assert len(rejects) == 1 + 5 and rejects[1].split("\t")[1] == "3"
    with TripleStore(db) as store:
        assert store.stats()["triples"] == 300


def test_nlpcc_and_csv_formats_agree_with_tsv(tmp_path, kb_slice_path):
    with open(kb_slice_path, encoding="utf-8") as fh:
        triples = [line.rstrip("\n").split("\t") for _, line in zip(range(400), fh)]
    nlpcc = tmp_path / "kb_nlpcc.txt"
    nlpcc.write_text("".join(f"{h} ||| {r} ||| {t}\n" for h, r, t in triples), encoding="utf-8")
    csv_path = tmp_path / "kb.csv"
    with open(csv_path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["head", "relation", "tail"])
        writer.writerows(triples)
        writer.writerow(["逗号实体", "描述", "含有, 逗号和\"引号\"的值"])
    a = TripleStore.import_files([nlpcc], tmp_path / "a.sqlite")
    b = TripleStore.import_files([csv_path], tmp_path / "b.sqlite")
    assert a.triples_stored == 400 and a.rejected == 0
    assert b.triples_stored == 401 and b.rejected == 0
    with TripleStore(tmp_path / "b.sqlite") as store:
        e = store.entity_by_name("逗号实体")
        assert store.triples(e.id)[0].tail == '含有, 逗号和"引号"的值'
        assert e.description == '含有, 逗号和"引号"的值'
        h, r, t = triples[0]
        assert any(x.relation == r and x.tail == t for x in store.triples(store.entity_by_name(h).id))


def test_homonyms_and_lookups(kb_store, kgclue_dev):
    # a gold head with a disambiguation whose base name is shared by other entities
    for q in kgclue_dev[:300]:
        head, relation, tail = q.triple
        base, dis = parse_name(head)
        homonyms = kb_store.entities_by_base(base)
        if dis and len(homonyms) >= 2:
            break
    else:
        pytest.fail("no homonym group among the first 300 dev questions")
    names = {e.name for e in homonyms}
    assert head in names
    assert len({e.disambiguation for e in homonyms}) == len(homonyms)
    entity = kb_store.entity_by_name(head)
    assert entity.base == base and entity.disambiguation == dis
    assert kb_store.entity(entity.id) == entity
    assert any(t.tail == tail for t in kb_store.triples(entity.id, relation))
    assert kb_store.triples(entity.id, "没有这个关系") == []
    assert any(t.head == head for t in kb_store.triples_by_tail(tail))
    assert kb_store.entity_by_name("不存在的实体名字") is None


def test_aliases_and_descriptions(kb_store):
    year = kb_store.entity_by_name("1894年")
    assert "甲午年" in kb_store.aliases(year.id)  # 别名
    assert kb_store.aliases(year.id)[0] == "1894年"  # base name first
    song = kb_store.entity_by_name("100种生活")
    assert song.description.startswith("《100种生活》是")


def test_failed_import_keeps_previous_store(tmp_path, kb_slice_path):
    db = tmp_path / "kb.sqlite"
    small = tmp_path / "small.txt"
    with open(kb_slice_path, encoding="utf-8") as fh:
        small.write_text("".join(line for _, line in zip(range(100), fh)), encoding="utf-8")
    TripleStore.import_files([small], db)
    with TripleStore(db) as store:
        before = store.stats()
    # The slice imports fully, then the next "file" (a directory) fails part-way through.
    broken = tmp_path / "not_a_file"
    broken.mkdir()
    with pytest.raises(IsADirectoryError):
        TripleStore.import_files([kb_slice_path, broken], db)
    with TripleStore(db) as store:
        after = store.stats()
    assert after["triples"] == before["triples"] == 100
    assert after["fingerprint"] == before["fingerprint"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kb.sqlite", "not_a_file", "small.txt"]


def test_store_is_read_only_and_missing_store_is_clear(kb_store, tmp_path):
    with pytest.raises(sqlite3.OperationalError):
        kb_store._conn.execute("DELETE FROM triples")
    with pytest.raises(FileNotFoundError, match="wenzhi kg import"):
        TripleStore(tmp_path / "nope.sqlite")


def test_folding_table_is_translate_then_lower():
    """`_fold` maps text through a code point table; `_fold_slow` is its definition
    (str.translate, then str.lower, one character per character)."""
    from wenzhi.kg import names

    every = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000)
    pieces = [every[i : i + 4096] for i in range(0, len(every), 4096)]
    pieces += ["ΑΣ ΟΔΟΣ", "İstanbul ΣΑΣ", "\ud800x", "Ｈｅｌｌｏ　Ｗｏｒｌｄ", "龍 編 站的坐標是什麼" * 8]
    for text in pieces:
        assert names._fold(text) == names._fold_slow(text), text[:20]
    batch = names.normalize_many(pieces)
    assert [n for n, _ in batch] == [names.normalize(t) for t in pieces]
    spaced = "我很好奇　龍 編 站的坐標是什麼啊？" * 4
    (norm, offmap), = names.normalize_many([spaced])
    assert norm == names.normalize(spaced) and [offmap[i] for i in range(len(norm))] == [
        i for i, c in enumerate(spaced) if not c.isspace()]


def test_batched_reads_match_one_by_one(kb_store):
    ids = [e.id for e in kb_store.iter_entities()][::7] + [10**9]
    busiest = max(kb_store.iter_entities(), key=lambda e: e.n_triples)
    ids.append(busiest.id)
    entities = kb_store.entities(ids)
    assert 10**9 not in entities and len(entities) == len(ids) - 1
    assert all(entities[i] == kb_store.entity(i) for i in entities)
    limit = max(2, busiest.n_triples // 2)  # the cut keeps the first triples, in triples()'s order
    rows = kb_store.relations_and_tails(ids, limit)
    for i in entities:
        assert rows.get(i, []) == [(t.relation, t.tail) for t in kb_store.triples(i)[:limit]]
    assert len(rows[busiest.id]) == limit
