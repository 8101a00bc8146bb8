"""The entity feature table (kg/feature_table.py) and the compiled scorer over it
(kg/context_scorer.py): the same scores, to the bit, as the Python path they replace in
`link_many`; the file safe to be handed (no pickle run, bounds checked, stale or foreign ones
rebuilt)."""
from __future__ import annotations

import pickle
import random
import re

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save

from wenzhi.kg import EntityLinker
from wenzhi.kg.context_scorer import NEUMAIER_SUM, _python_sum
from wenzhi.kg.feature_table import EntityFeatureTable, FeatureTableError
from wenzhi.kg.linker import LinkerConfig
from wenzhi.kg.names import normalize_many


@pytest.fixture(scope="module")
def texts(kgclue_dev, kb_store, data_dir) -> list[str]:
    qs = [q.question for q in kgclue_dev[:200]]
    described = [e for e in kb_store.iter_entities() if e.description][:10]
    asked = [f"{e.base}和{e.description[:12]}有什么关系？" for e in described]
    with open(data_dir / "corpus" / "reviews_pos.txt", encoding="utf-8") as fh:
        reviews = [next(fh).strip() for _ in range(200)]
    tag = re.compile(r"/[a-zA-Z]+\s*")  # People's Daily: running text, longer windows
    with open(data_dir / "corpus" / "people_daily_1998_pos.txt", encoding="utf-8") as fh:
        news = [t for t in (tag.sub("", next(fh)).replace(" ", "").strip() for _ in range(300)) if t]
    return qs + asked + reviews + news + ["", "刘晓华", "\ud800刘晓华 主讲课程", "刘 晓 华 主 讲"]


def _mentions(found) -> list:
    return [(m.text, m.start, m.end, m.entity and m.entity.id, m.score, [(e.id, p) for e, p in m.candidates])
            for m in found]


def test_compiled_scores_are_the_python_scores(kb_store, texts):
    """Every ambiguous occurrence `link_many` scores: the kernel's floats == `definition.occurrence_scores`'s."""
    linker = EntityLinker(kb_store)
    compared = with_evidence = described = 0
    for i in range(0, len(texts), 16):
        batch = texts[i : i + 16]
        normalized = normalize_many(batch)
        joined = "\n".join(norm for norm, _ in normalized)
        found = linker._detect(joined)
        if not found:
            continue
        linker.link_many(batch)  # registers the batch's aliases with the scorer
        scorer = linker._scorer
        starts, ends, lo, hi, keys, local = [], [], [], [], [], []
        base = 0
        bounds = []
        for norm, _ in normalized:
            bounds.append((base, base + len(norm), norm))
            base += len(norm) + 1
        for s, e, key_id in found:
            if key_id in scorer:
                b, h, norm = next(x for x in bounds if x[0] <= s < x[1])
                starts.append(s), ends.append(e), lo.append(b), hi.append(h), keys.append(key_id)
                local.append((norm, s - b, e - b, key_id))
        if not keys:
            continue
        codes = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        scores, offsets = scorer.score(codes, lo, hi, starts, ends, keys)
        for j, (norm, s, e, key_id) in enumerate(local):
            want = linker.definition.occurrence_scores(norm, s, e, key_id)
            got = tuple(scores[offsets[j] : offsets[j + 1]])
            assert got == want, (norm, s, e)
            compared += 1
            with_evidence += want != linker.definition.prepared[key_id].fixed_scores
            described += linker.definition.prepared[key_id].described
    assert compared >= 60 and with_evidence >= 40 and described >= 1


@pytest.mark.parametrize("max_triples", [300, 2])
def test_link_many_is_the_python_path(kb_store, texts, max_triples):
    """Whole Mentions: `link_many` (compiled scorer) against `link(text, spans)` on the same
    occurrences (the Python path), batch sizes 1 and 16, cold then warm. max_triples=2 puts most
    entities on the table build's other path (features from their first triples only)."""
    config = LinkerConfig(max_triples=max_triples)
    table = EntityFeatureTable.build(kb_store, max_triples)
    reference = EntityLinker(kb_store, config=config, compiled=False)
    for size in (1, 16):
        linker = EntityLinker(kb_store, config=config, feature_table=table)
        for _ in range(2):
            ambiguous = 0
            for i in range(0, len(texts), size):
                batch = texts[i : i + size]
                for text, found in zip(batch, linker.link_many(batch)):
                    want = reference.link(text, spans=[(m.start, m.end) for m in found]) if found else []
                    assert _mentions(found) == _mentions(want), text
                    ambiguous += sum(len(m.ranked) > 1 for m in found)
            assert ambiguous >= 60


def test_link_many_with_caches_that_empty_mid_batch(kb_store, texts):
    """Caches far smaller than a batch's aliases: they empty themselves while `link_many` fills
    them (the single-candidate aliases it just read, the outcomes, the entities, the scorer's
    slots), and the Mentions stay those of the Python path."""
    reference = EntityLinker(kb_store, compiled=False)
    linker = EntityLinker(kb_store).warm()
    linker._unambiguous.max_size = linker._outcomes.max_size = 3
    linker._entities.max_size = linker._key_entities.max_size = 5
    linker._scorer.max_keys = 4
    for _ in range(2):
        for i in range(0, len(texts), 16):
            batch = texts[i : i + 16]
            for text, found in zip(batch, linker.link_many(batch)):
                want = reference.link(text, spans=[(m.start, m.end) for m in found]) if found else []
                assert _mentions(found) == _mentions(want), text
    assert len(linker._unambiguous) <= 3 and len(linker._scorer.slots) <= 4


def test_python_sum_is_builtin_sum():
    rng = random.Random(0)
    for _ in range(2000):
        terms = [rng.choice([0.0, -0.0, 1e-17, 1e16, -1e16]) if rng.random() < 0.2 else rng.uniform(-5, 5) * 10 ** rng.randint(-8, 8)
                 for _ in range(14)]
        assert _python_sum(np.array(terms), len(terms), NEUMAIER_SUM) == sum(terms)


LINES = ["刘晓华（北京大学教授）\t主讲课程\t数学分析", "刘晓华（北京大学教授）\t描述\t北京大学数学系教授",
         "刘晓华（演员）\t代表作品\t大宅门", "刘晓华（演员）\t职业\t演员", "大宅门\t导演\t郭宝昌"]


def test_table_round_trip_and_deterministic(tmp_path, store_of):
    store = store_of(LINES)
    table = EntityFeatureTable.build(store, 300)
    path = tmp_path / "t.features"
    table.save(path)
    loaded = EntityFeatureTable.load(path)
    assert loaded.fingerprint == store.fingerprint and loaded.max_triples == 300
    assert all(np.array_equal(table.arrays[k], loaded.arrays[k]) for k in table.arrays)
    again = EntityFeatureTable.build(store, 300)  # the same arrays, build after build
    assert all(np.array_equal(table.arrays[k], again.arrays[k]) for k in table.arrays)
    # homonyms with different triples have different profiles; an unknown id has the empty one
    ids = [e.id for e in store.entities_by_base("刘晓华")]
    assert len(set(table.profiles_of(ids))) == 2 and table.profiles_of([10**6, -3]) == [0, 0]


def _rewrite(path, arrays=None, **meta_changes) -> None:
    with safe_open(str(path), framework="numpy") as fh:
        meta = dict(fh.metadata())
        stored = {k: fh.get_tensor(k) for k in fh.keys()}
    stored.update(arrays or {})
    meta.update(meta_changes)
    path.write_bytes(save(stored, metadata=meta))


@pytest.mark.parametrize("change", ["version", "out_of_bounds", "not_a_code_point", "offsets"])
def test_bad_tables_are_refused_then_rebuilt(store_of, change):
    store = store_of(LINES)
    path = EntityFeatureTable.default_path(store)
    EntityFeatureTable.for_store(store, 300)
    good = EntityFeatureTable.load(path).arrays
    if change == "version":
        _rewrite(path, version="0")
    elif change == "out_of_bounds":
        _rewrite(path, {"entity_profile": good["entity_profile"] + 1000})
    elif change == "not_a_code_point":
        _rewrite(path, {"relation_chars_values": good["relation_chars_values"] + 0x110000})
    else:
        _rewrite(path, {"tail_chars_offsets": good["tail_chars_offsets"][::-1].copy()})
    with pytest.raises(FeatureTableError, match="version 1|indexes outside|no code point|offsets"):
        EntityFeatureTable.load(path)
    # the linker rebuilds it (and links as before)
    linker = EntityLinker(store)
    assert [m.entity.name for m in linker.link("刘晓华主讲课程是什么")] == ["刘晓华（北京大学教授）"]
    assert all(np.array_equal(good[k], v) for k, v in EntityFeatureTable.load(path).arrays.items())


def test_planted_pickle_is_not_run_and_stale_tables_rebuilt(tmp_path, store_of):
    store = store_of(LINES)
    marker = tmp_path / "payload-ran"
    path = EntityFeatureTable.default_path(store)

    class Payload:
        def __reduce__(self):
            return open, (str(marker), "w")

    path.write_bytes(pickle.dumps({"version": 1, "payload": Payload()}))
    assert EntityLinker(store).link_many(["刘晓华是演员，代表作品大宅门"])[0][0].entity.name == "刘晓华（演员）"
    assert not marker.exists()
    assert EntityFeatureTable.load(path).fingerprint == store.fingerprint
    # another store's table, or one made for another max_triples: rebuilt for this one
    _rewrite(path, fingerprint="someone else's")
    assert EntityFeatureTable.for_store(store, 300).fingerprint == store.fingerprint
    assert EntityFeatureTable.for_store(store, 1).max_triples == 1
    with pytest.raises(ValueError, match="max_triples"):
        EntityLinker(store, config=LinkerConfig(max_triples=300), feature_table=EntityFeatureTable.build(store, 1))
