"""The linker's fast scoring (context-free terms precomputed per alias and candidate, context
features skipped for candidates sharing no character with the context, cached overlaps) against
the straightforward computation it replaced: every candidate of every alias occurrence scored
as weights . `_feature_vector` (what `feature_rows` gives the fitting), whose context features
are in turn checked against their definitions, computed from the store."""
from __future__ import annotations

import math
import operator

import opencc
import pytest

from wenzhi.kg import EntityLinker
from wenzhi.kg import entity_features
from wenzhi.kg import linker as linker_module
from wenzhi.kg.names import normalize, normalize_with_offsets

N_QUESTIONS = 200


@pytest.fixture(scope="module")
def questions(kgclue_dev, kb_store) -> list[str]:
    qs = [q.question for q in kgclue_dev[:N_QUESTIONS]]
    # traditional script and spaced variants: offsets must map back through the dropped spaces
    s2t = opencc.OpenCC("s2t")
    spaced = [" ".join(q[i : i + 3] for i in range(0, len(q), 3)) for q in qs[:20]]
    variants = [s2t.convert(q) for q in qs[:20]] + spaced
    # No slice question names an entity with a description: ask about some, quoting a little of it.
    described = [e for e in kb_store.iter_entities() if e.description][:10]
    asked = [f"{e.base}和{e.description[:12]}有什么关系？" for e in described]
    return qs + variants + asked


def _grams(text: str) -> set[str]:
    return {text[i : i + 2] for i in range(len(text) - 1)}


def defined_context_features(store, entity_id: int, context: str, max_triples: int) -> tuple[float, ...]:
    """FEATURES[:6] as their comments define them, from the entity's triples."""
    entity = store.entity(entity_id)
    triples = store.triples(entity_id)[:max_triples]
    chars, grams = set(context), _grams(context)
    touched = [r for r in {normalize(t.relation) for t in triples} if set(r) & chars]  # relation names
    tails = [set(normalize(t.tail)) for t in triples if 2 <= len(t.tail) <= 20]
    dis = set(normalize(entity.disambiguation)) if entity.disambiguation else set()
    desc = _grams(normalize(entity.description[:500])) if entity.description else set()
    return (
        max((len(set(r) & chars) / len(set(r)) for r in touched), default=0.0),
        min(max((len(set(r) & chars) for r in touched), default=0), 4) / 4.0,
        max((len(_grams(r) & grams) / len(_grams(r)) for r in touched if len(r) > 1), default=0.0),
        max((len(t & chars) / len(t) for t in tails if t & chars), default=0.0),
        len(dis & chars) / len(dis) if dis else 0.0,
        len(desc & grams) / len(grams) if desc and grams else 0.0,
    )


def occurrences(linker: EntityLinker, text: str):
    """(normalised text, start, end, key id, entity id, prior) for every candidate `rank` scores."""
    norm, _ = normalize_with_offsets(text)
    for s, e, key_id in set(linker.index.matches(norm, single_chars=True)):
        for eid, prior in linker.index.key_candidates(key_id)[: linker.config.max_candidates]:
            yield norm, s, e, key_id, eid, prior


def reference_scores(linker: EntityLinker, text: str) -> list[tuple[float, int, int, int]]:
    """(score, entity id, start, end) for every candidate of every alias occurrence, in `rank`'s
    order, each score w . `_feature_vector` with nothing precomputed or skipped."""
    _, offmap = normalize_with_offsets(text)
    to_orig = (lambda i: i) if offmap is None else offmap.__getitem__
    w = linker.config.weights
    out = []
    for norm, s, e, key_id, eid, prior in occurrences(linker, text):
        vector = linker._feature_vector(norm[s:e], key_id, linker._context(norm, s, e), eid, prior)
        out.append((sum(map(operator.mul, w, vector)), eid, to_orig(s), to_orig(e - 1) + 1))
    return out


def reference_rank(linker: EntityLinker, text: str, k: int) -> list[tuple[int, float, int, int]]:
    scored = sorted(reference_scores(linker, text), key=lambda x: -x[0])
    seen, out = set(), []
    for score, eid, start, end in scored:
        if eid not in seen:
            seen.add(eid)
            out.append((eid, score, start, end))
    return out[:k]


def reference_posteriors(linker: EntityLinker, text: str, start: int, end: int) -> list[tuple[int, float]]:
    """`link`'s candidates for the occurrence rank reports at (start, end): a softmax of the
    reference scores, best first."""
    raw = [(score, eid) for score, eid, s, e in reference_scores(linker, text) if (s, e) == (start, end)]
    top = max(score for score, _ in raw)
    exp = [(eid, math.exp(score - top)) for score, eid in raw]
    z = sum(x for _, x in exp)
    return sorted(((eid, x / z) for eid, x in exp), key=lambda c: -c[1])


def ranked(linker: EntityLinker, text: str, k: int = 8) -> list[tuple[int, float, int, int]]:
    return [(e.id, score, m.start, m.end) for e, score, m in linker.rank(text, k=k)]


def assert_same_ranking(got, want, text):
    assert [(eid, s, e) for eid, _, s, e in got] == [(eid, s, e) for eid, _, s, e in want], text
    for (_, score, _, _), (_, ref, _, _) in zip(got, want):
        assert abs(score - ref) <= 1e-9, text


@pytest.mark.parametrize("index_min_groups,compiled", [(entity_features.INDEX_MIN_GROUPS, True),
                                                       (entity_features.INDEX_MIN_GROUPS, False), (0, False)])
def test_rank_matches_reference(kb_store, questions, monkeypatch, index_min_groups, compiled):
    # 0: every entity's relations and tails go through the inverted index, the path taken by
    # entities with many relations (rare in the slice, common in the full KgCLUE KB)
    monkeypatch.setattr(entity_features, "INDEX_MIN_GROUPS", index_min_groups)
    linker = EntityLinker(kb_store, compiled=compiled)
    for _ in range(2):  # cold caches, then warm ones
        for q in questions:
            assert_same_ranking(ranked(linker, q), reference_rank(linker, q, 8), q)


@pytest.mark.parametrize("index_min_groups", [entity_features.INDEX_MIN_GROUPS, 0])
def test_context_features_match_their_definitions(kb_store, questions, monkeypatch, index_min_groups):
    monkeypatch.setattr(entity_features, "INDEX_MIN_GROUPS", index_min_groups)
    linker = EntityLinker(kb_store)
    window, n = linker.config.context_window, 0
    for q in questions:
        for norm, s, e, key_id, eid, prior in occurrences(linker, q):
            context = norm[max(0, s - window) : s] + "\x00" + norm[e : e + window]
            got = linker._feature_vector(norm[s:e], key_id, linker._context(norm, s, e), eid, prior)
            want = defined_context_features(kb_store, eid, context, linker.config.max_triples)
            assert got[: len(want)] == list(want), (q, norm[s:e], eid)
            n += 1
    assert n > len(questions)


def test_scores_match_feature_rows(kb_store, questions):
    linker = EntityLinker(kb_store)
    w = linker.config.weights
    rows_seen = 0
    for q in questions:
        want = sorted((eid, sum(map(operator.mul, w, vec))) for eid, vec in linker.feature_rows(q))
        got = sorted((eid, score) for score, eid, _, _ in reference_scores(linker, q))
        assert [eid for eid, _ in got] == [eid for eid, _ in want]
        assert all(abs(a - b) <= 1e-9 for (_, a), (_, b) in zip(got, want))
        best = {}
        for eid, score in want:
            best[eid] = max(best.get(eid, -math.inf), score)
        for eid, score, _, _ in ranked(linker, q, k=len(best)):
            assert abs(score - best[eid]) <= 1e-9, q
        rows_seen += len(want)
    assert rows_seen > N_QUESTIONS


def test_slice_exercises_every_context_feature(kb_store, questions):
    """The checks above mean something only if the questions reach every context feature."""
    linker = EntityLinker(kb_store)
    nonzero = [0] * entity_features.N_CONTEXT_FEATURES
    for q in questions:
        for _, vec in linker.feature_rows(q):
            for j in range(len(nonzero)):
                nonzero[j] += vec[j] != 0
    assert all(n > 0 for n in nonzero), dict(zip(linker_module.FEATURES, nonzero))


def test_link_spans_match_reference(kb_store, questions):
    shared = EntityLinker(kb_store)  # rank then link on each text, as the KBQA service does
    alone = EntityLinker(kb_store)  # link only: its caches filled in another order
    python = EntityLinker(kb_store, compiled=False)  # the definition the compiled scores equal
    ambiguous = 0
    for q in questions:
        top = shared.rank(q, k=8)
        if not top:
            continue
        _, _, mention = top[0]
        spans = [(mention.start, mention.end)]
        got = [[(m.start, m.end, m.entity and m.entity.id, m.score, [(e.id, p) for e, p in m.candidates])
                for m in linker.link(q, spans=spans)] for linker in (shared, alone, python)]
        assert got[0] == got[1] == got[2], q
        (start, end, best, score, cands), = got[0]
        assert (start, end) == spans[0]
        if len(cands) > 1:
            ambiguous += 1
            want = reference_posteriors(shared, q, start, end)
            assert [eid for eid, _ in cands] == [eid for eid, _ in want], q
            assert all(abs(p - r) <= 1e-9 for (_, p), (_, r) in zip(cands, want)), q
            assert score == cands[0][1] and best == (cands[0][0] if score >= shared.config.nil_threshold else None)
        # and rank again after link: the same as the first time
        assert ranked(shared, q) == [(e.id, s, m.start, m.end) for e, s, m in top]
    assert ambiguous >= 5


def _mentions(found) -> list:
    return [(m.text, m.start, m.end, m.entity and m.entity.id, m.score, [(e.id, p) for e, p in m.candidates])
            for m in found]


def test_link_many_is_link_text_by_text(kb_store, questions, data_dir):
    """A batch is linked as its texts are one by one: same mentions, offsets, posteriors,
    whatever the batch size and the caches' state (cold, warm, mixed)."""
    with open(data_dir / "corpus" / "reviews_pos.txt", encoding="utf-8") as fh:
        reviews = [next(fh).strip() for _ in range(300)]
    texts = questions + reviews + ["", "   ", "刘晓华", "\ud800刘晓华 主讲课程"]
    one_by_one = EntityLinker(kb_store)
    want = [_mentions(one_by_one.link(t)) for t in texts]
    for size in (1, 7, 64, len(texts)):
        batched = EntityLinker(kb_store)
        for _ in range(2):  # cold caches, then warm ones
            got = [_mentions(ms) for i in range(0, len(texts), size) for ms in batched.link_many(texts[i : i + size])]
            assert got == want, size
    assert sum(map(len, want)) > 300 and sum(len(m[5]) > 1 for ms in want for m in ms) > 20


def test_scorer_starting_over_keeps_the_batch(kb_store, questions):
    """A compiled scorer that fills up starts over; the aliases of the batch it was scoring are
    registered again, so the results do not change (a tiny scorer: it starts over on every text)."""
    reference = EntityLinker(kb_store, compiled=False)
    tiny = EntityLinker(kb_store).warm()
    tiny._scorer.max_keys = 3
    seen: set[int] = set()
    for q in questions[:60]:
        assert ranked(tiny, q) == ranked(reference, q), q
        assert _mentions(tiny.link(q)) == _mentions(reference.link(q)), q
        seen.update(tiny._scorer.slots)
    assert len(seen) > 40 and len(tiny._scorer.slots) < 20  # it did start over, many times
