"""AliasIndex and EntityLinker on the real KB slice and real KgCLUE questions."""
from __future__ import annotations

import time

import opencc
import pytest

from wenzhi.kg import AliasIndex, EntityLinker, TripleStore, normalize, parse_name
from wenzhi.kg.linker import LinkerConfig
from wenzhi.kg.linking_eval import evaluate_linking
from wenzhi.kg.questions import read_questions


@pytest.fixture(scope="module")
def linker(kb_store):
    return EntityLinker(kb_store)


def test_kgclue_dev_topic_entities(linker, data_dir):
    questions = read_questions(data_dir / "kgclue" / "dev.json", 300)
    ours = evaluate_linking(linker, questions)
    baseline = evaluate_linking(EntityLinker(linker.store, linker.index, LinkerConfig(context=False)), questions)
    assert ours["n"] == 300 and ours["gold_in_kb"] == 1.0
    assert ours["accuracy_at_1"] >= 0.95
    assert ours["accuracy_at_1"] > baseline["accuracy_at_1"]
    assert ours["recall_at_5"] >= ours["accuracy_at_1"]


def test_homonyms_are_told_apart_by_context(linker, kb_store):
    # 刘晓华 (no suffix) and 刘晓华（广东工业大学教授）: the question's wording picks one.
    homonyms = kb_store.entities_by_base("刘晓华")
    assert len(homonyms) >= 2
    chosen = set()
    for e in homonyms:
        relation = kb_store.triples(e.id)[0].relation
        text = f"请问刘晓华的{relation}是什么？"
        mention = next(m for m in linker.link(text) if m.text == "刘晓华")
        assert mention.entity == e, (text, mention.candidates)
        assert [c for c, _ in mention.candidates][0] == e and len(mention.candidates) == len(homonyms)
        chosen.add(mention.entity.id)
    assert len(chosen) == len(homonyms)


def test_traditional_and_full_width_input_offsets(linker):
    text = opencc.OpenCC("s2t").convert("刘晓华主要讲什么课啊？")
    assert text != "刘晓华主要讲什么课啊？"
    top, _, mention = linker.rank(text)[0]
    assert top.name == "刘晓华（广东工业大学教授）"
    assert text[mention.start : mention.end] == mention.text == "劉曉華"
    spaced = "我很好奇　龍 編 站的坐標是什麼啊？"
    found = [m for m in linker.link(spaced) if m.entity and m.entity.name == "龙编站"]
    assert found and spaced[found[0].start : found[0].end] == "龍 編 站"


def test_alias_relation_links_to_entity(linker, kb_store):
    year = kb_store.entity_by_name("1894年")
    assert "甲午年" in kb_store.aliases(year.id)
    mentions = linker.link("甲午年发生了很多事")
    assert any(m.entity == year and m.text == "甲午年" for m in mentions)
    assert year.id in {e for e, _ in linker.index.candidates("甲午年")}


def test_empty_and_very_long_input(linker, data_dir):
    assert linker.link("") == [] and linker.link("   \n") == [] and linker.rank("") == []
    assert linker.link("，。！？") == []
    with open(data_dir / "corpus" / "reviews_pos.txt", encoding="utf-8") as fh:
        text = fh.read(200_000)
    start = time.perf_counter()
    mentions = linker.link(text)
    assert time.perf_counter() - start < 30
    assert len(mentions) > 100
    last_end = 0
    for m in mentions:
        assert 0 <= m.start < m.end <= len(text) and m.start >= last_end  # ordered, no overlap
        assert normalize(text[m.start : m.end]) == normalize(m.text)
        last_end = m.end
        if m.entity is not None:
            assert 0.0 < m.score <= 1.0 and m.candidates[0][0] == m.entity


def test_ner_spans_hook_and_nil(linker):
    text = "我很好奇龙编站的坐标是什么啊？"
    start = text.index("龙编站")
    mentions = linker.link(text, spans=[(start, start + 3), (0, 2)])
    assert mentions[0].entity.name == "龙编站" and (mentions[0].start, mentions[0].end) == (start, start + 3)
    # a span naming nothing in the KB is reported as NIL
    nil = linker.link("我很好奇龙编站的坐标是什么啊？", spans=[(0, 1)])
    assert len(nil) == 1 and nil[0].entity is None and nil[0].candidates == []
    strict = EntityLinker(linker.store, linker.index, LinkerConfig(nil_threshold=0.99))
    ambiguous = [m for m in strict.link("刘晓华") if len(m.candidates) > 1]
    assert ambiguous and ambiguous[0].entity is None  # no context: no candidate is 0.99 sure


def test_alias_index_persists_and_rebuilds_when_store_changes(tmp_path, kb_slice_path):
    db = tmp_path / "kb.sqlite"
    small = tmp_path / "small.txt"
    with open(kb_slice_path, encoding="utf-8") as fh:
        small.write_text("".join(line for _, line in zip(range(2000), fh)), encoding="utf-8")
    TripleStore.import_files([small], db)
    with TripleStore(db) as store:
        index = AliasIndex.for_store(store)
        saved = AliasIndex.default_path(store)
        assert saved.exists() and index.fingerprint == store.fingerprint
        loaded = AliasIndex.load(saved)
        assert loaded.candidates("1894年") == index.candidates("1894年") != []
        assert len(loaded) == len(index)
    TripleStore.import_files([kb_slice_path], db)
    with TripleStore(db) as store:
        rebuilt = AliasIndex.for_store(store)
        assert rebuilt.fingerprint == store.fingerprint != index.fingerprint
        assert len(rebuilt) > len(index)
    saved.write_bytes(b"truncated")
    with TripleStore(db) as store:
        assert len(AliasIndex.for_store(store)) == len(rebuilt)  # unreadable file: rebuilt


def test_prior_favours_better_known_homonym(linker, kb_store):
    for e in kb_store.iter_entities():
        group = kb_store.entities_by_base(e.base) if e.disambiguation else []
        counts = [g.n_triples for g in group]
        if len(group) >= 2 and len(set(counts)) > 1:
            break
    cands = linker.index.candidates(group[0].base)
    assert abs(sum(p for _, p in cands) - 1.0) < 1e-4
    assert cands[0][0] == max(group, key=lambda g: g.n_triples).id
    assert parse_name(kb_store.entity(cands[0][0]).name)[0] == group[0].base
