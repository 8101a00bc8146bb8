"""What the linker and the store keep per cached entity stays compact (issue 12: the KBQA
service's RSS grew with the linker's per-entity caches), with results unchanged (the
equivalence tests in test_linker_speed_equivalence.py):
- every character in a cached feature set is one shared string object, not a copy per set;
- a union of feature sets is the largest one itself when it holds the others;
- cached triples share their head's name and the store's relation-name strings;
- entity features built per batch from raw rows are the ones built one entity at a time."""
from __future__ import annotations

import json

from wenzhi.kg import EntityLinker, TripleStore
from wenzhi.kg import entity_features
from wenzhi.kg.names import normalize, normalize_each
from wenzhi.kg.store import _TRIPLE_SELECT, Triple


def _dev_questions(data_dir, n: int) -> list[str]:
    with open(data_dir / "kgclue" / "dev.json", encoding="utf-8") as fh:
        return [json.loads(line)["question"] for line, _ in zip(fh, range(n))]


def _fill(linker: EntityLinker, question: str) -> None:
    """The linker's caches as the QA service fills them: rank (every alias occurrence), then link."""
    linker.rank(question, k=8)
    linker.link(question)


def test_cached_features_share_character_objects(kb_db, data_dir):
    store = TripleStore(kb_db)
    linker = EntityLinker(store, compiled=False)  # the Python path: the one that caches feature sets
    for q in _dev_questions(data_dir, 300):
        _fill(linker, q)
    profiles = {f.profile for f in linker._features.values()}
    assert len(profiles) > 100
    chars = [c for p in profiles for group in (*p.relations.groups, *p.tails.groups, p.disambiguation, p.chars)
             for c in group]
    assert len(chars) > 1000
    assert all(entity_features._CHARS[c] is c for c in chars)


def test_union_reuses_the_largest_set():
    a, b = frozenset("主讲课程"), frozenset("课程")
    assert entity_features.union([a, b, frozenset()]) is a
    assert entity_features.union([frozenset(), frozenset()]) == frozenset()
    assert entity_features.union([b, frozenset("出生")]) == frozenset("课程出生")


def test_cached_triples_share_names_and_keep_their_order(kb_store):
    busiest = sorted(kb_store.iter_entities(), key=lambda e: -e.n_triples)[:20]
    names = kb_store.relation_names()
    by_name = {name: name for name in names.values()}
    for entity in busiest:
        triples = kb_store.triples(entity.id)
        # the joined query the store used to run, in the clustered key's order (relation id, tail)
        rows = kb_store._conn.execute(_TRIPLE_SELECT + "WHERE t.head_id = ? ORDER BY t.rel_id, t.tail", (entity.id,))
        assert list(triples) == [Triple(*r) for r in rows]
        assert all(t.relation is by_name[t.relation] for t in triples)
        assert len({id(t.head) for t in triples}) == 1
    assert kb_store.triples(10**9) == []


def test_triple_rows_are_relations_and_tails(kb_store):
    ids = [e.id for e in kb_store.iter_entities()][::5]
    names = kb_store.relation_names()
    for limit in (None, 3):
        rows = kb_store.triple_rows(ids, limit)
        assert {h: [(names[r], t) for _, r, t in rs] for h, rs in rows.items()} == kb_store.relations_and_tails(ids, limit)
        assert all(all(h == head for h, _, _ in rs) for head, rs in rows.items())


def test_normalize_each_is_normalize():
    texts = ["劉曉華 主講課程", "ＡＢＣ　ｄｅｆ", "ΣΑΣ", "", "  ", "𠮷野家", "İstanbul", "机械设计基础(杨可桢著)"]
    assert normalize_each(texts) == [normalize(t) for t in texts]
    assert normalize_each(texts[:2] + texts[3:]) == [normalize(t) for t in texts[:2] + texts[3:]]  # no sigma
