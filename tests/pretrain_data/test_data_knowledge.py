import numpy as np
import pytest

from wenzhi.model.knowledge_masking import (Curriculum, CurriculumStage, EntityMasker, MixedMasker, PhraseMasker,
                                     pos_chunks, pos_words)
from wenzhi.model.masking import CharMasker, WholeWordMasker, apply_masks, encode_example, mask_budget


def test_entity_spans_masked_whole_and_aligned(tokenizer, linker, kgclue_dev):
    masker = EntityMasker(linker)
    masked_entities = latin = 0
    for seed, q in enumerate(kgclue_dev[:200]):
        ex = encode_example(tokenizer, q.question)
        rng = np.random.default_rng(seed)
        spans = masker.select_spans(ex, rng, mask_budget(ex.num_maskable, 0.3))
        ids, labels = apply_masks(ex.input_ids, spans, rng, tokenizer, ex.special_mask)
        for span in spans:
            if span.kind != "entity":
                continue
            s, e = span
            a, b = ex.offsets[s][0], ex.offsets[e - 1][1]
            inside = [m for m in ex.entity_spans if a <= m[0] and m[1] <= b]
            assert inside, (q.question, q.question[a:b])
            # token boundaries snap to the mention: no token outside it is taken
            assert a == min(m[0] for m in inside) and b == max(m[1] for m in inside)
            masked_entities += 1
            latin += any(c.isascii() and c.isalpha() for c in q.question[a:b])
        for ms, me in ex.entity_spans:  # each mention labelled entirely or not at all
            toks = [i for i, (s, e) in enumerate(ex.offsets) if s < me and e > ms and not ex.special_mask[i]]
            assert len({labels[t] != -100 for t in toks}) == 1
    assert masked_entities > 100 and latin > 0


def test_entity_masker_uses_people_daily_names(tokenizer, people_daily_docs):
    doc = next(d for d in people_daily_docs if "江泽民" in d.text)
    ex = encode_example(tokenizer, doc.text, pos_words=doc.words)
    EntityMasker(None).select_spans(ex, np.random.default_rng(0), 10)
    start = doc.text.index("江泽民")
    assert (start, start + 3) in ex.entity_spans


def test_phrase_chunks_from_pos():
    words = pos_words("中共中央总书记江泽民发表了新年讲话，全国人民代表大会通过了三项决议")
    chunks = pos_chunks(words)
    text = "中共中央总书记江泽民发表了新年讲话，全国人民代表大会通过了三项决议"
    assert chunks and all(e - s >= 2 for s, e in chunks)
    assert any(text[s:e] in ("新年讲话", "三项决议", "三项") for s, e in chunks), [text[s:e] for s, e in chunks]


def test_phrases_masked_whole(tokenizer, people_daily_docs):
    masked_phrases = 0
    for seed, doc in enumerate(people_daily_docs[:80]):
        ex = encode_example(tokenizer, doc.text, pos_words=doc.words)
        rng = np.random.default_rng(seed)
        spans = PhraseMasker().select_spans(ex, rng, mask_budget(ex.num_maskable))
        _, labels = apply_masks(ex.input_ids, spans, rng, tokenizer, ex.special_mask)
        for ps, pe in ex.phrase_spans:
            toks = [i for i, (s, e) in enumerate(ex.offsets) if s < pe and e > ps and not ex.special_mask[i]]
            state = {labels[t] != -100 for t in toks}
            assert len(state) == 1
            masked_phrases += state == {True}
    assert masked_phrases > 30


def test_mixed_masker_follows_weights():
    mixed = MixedMasker({"char": CharMasker(), "word": WholeWordMasker()}, {"char": 1, "word": 3})
    rng = np.random.default_rng(0)
    picks = [mixed.choose(rng) for _ in range(4000)]
    assert abs(picks.count("word") / 4000 - 0.75) < 0.03
    with pytest.raises(ValueError, match="unknown maskers"):
        MixedMasker({"char": CharMasker()}, {"entity": 1})


def test_curriculum_fine_to_coarse_short_to_long():
    cur = Curriculum.default(128, {"char": 1, "word": 2, "phrase": 1, "entity": 2, "uktp": 1})
    stages = [cur.stage_at(p / 100) for p in range(101)]
    lengths = [s.max_len for s in stages]
    assert lengths == sorted(lengths) and lengths[0] == 32 and lengths[-1] == 128
    coarse = [sum(w for k, w in s.weights.items() if k in ("phrase", "entity", "uktp")) for s in stages]
    assert coarse[0] == 0 and coarse == sorted(coarse) and coarse[-1] > 0
    assert cur.index_at(0.0) == 0 and cur.index_at(0.2) == 0 and cur.index_at(0.21) == 1 and cur.index_at(1.0) == 2
    with pytest.raises(ValueError):
        Curriculum([CurriculumStage(0.5, {"word": 1}, 64)])  # does not reach the end
