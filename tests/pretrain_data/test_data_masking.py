import numpy as np
import pytest

from wenzhi.model.knowledge_masking import PhraseMasker
from wenzhi.model.masking import (CharMasker, WholeWordMasker, apply_masks, encode_example, mask_budget,
                           replacement_ids, segment_words)


def _mask(tokenizer, masker, text, seed, **hints):
    ex = encode_example(tokenizer, text, **hints)
    rng = np.random.default_rng(seed)
    spans = masker.select_spans(ex, rng, mask_budget(ex.num_maskable))
    ids, labels = apply_masks(ex.input_ids, spans, rng, tokenizer, ex.special_mask)
    return ex, spans, ids, labels


def test_whole_words_masked_whole(tokenizer, review_lines):
    masked_words = 0
    for seed, text in enumerate(review_lines[:150]):
        ex, spans, ids, labels = _mask(tokenizer, WholeWordMasker(), text, seed)
        starts = np.array([s for s, _ in ex.offsets])
        ends = np.array([e for _, e in ex.offsets])
        normal = ~np.array(ex.special_mask)
        for ws, we in segment_words(text):
            toks = np.nonzero(normal & (starts < we) & (ends > ws))[0]
            state = set((labels[toks] != -100).tolist())
            assert len(state) <= 1, (text[ws:we], tokenizer.convert_ids_to_tokens([ex.input_ids[t] for t in toks]))
            masked_words += state == {True}
    assert masked_words > 300


def test_ratio_near_target(tokenizer, review_lines, people_daily_docs):
    for masker in (CharMasker(), WholeWordMasker(), PhraseMasker()):
        masked = maskable = 0
        for seed, doc in enumerate(people_daily_docs[:100]):
            ex, spans, ids, labels = _mask(tokenizer, masker, doc.text, seed, pos_words=doc.words)
            masked += int((labels != -100).sum())
            maskable += ex.num_maskable
        assert 0.135 <= masked / maskable <= 0.16, (masker.name, masked / maskable)


@pytest.mark.parametrize("masker", [CharMasker(), WholeWordMasker(), PhraseMasker()], ids=lambda m: m.name)
def test_specials_never_masked(tokenizer, review_lines, masker):
    specials = set(tokenizer.all_special_ids)
    for seed, text in enumerate(review_lines[:60]):
        ex = encode_example(tokenizer, text)
        rng = np.random.default_rng(seed)
        spans = masker.select_spans(ex, rng, budget=len(ex.input_ids))  # ask for everything
        # even a span covering the specials leaves them alone
        ids, labels = apply_masks(ex.input_ids, spans + [(0, len(ex.input_ids))], rng, tokenizer, ex.special_mask)
        special = np.array(ex.special_mask)
        assert (labels[special] == -100).all()
        assert (ids[special] == np.array(ex.input_ids)[special]).all()
        assert all(ex.input_ids[i] in specials for i in np.nonzero(special)[0])
        assert not any(special[s:e].any() for s, e in spans)


def test_80_10_10(tokenizer, review_lines):
    rng = np.random.default_rng(0)
    ex = encode_example(tokenizer, review_lines[1])
    original = np.array(ex.input_ids)
    outcomes = {"mask": 0, "random": 0, "keep": 0}
    for _ in range(4000):
        ids, labels = apply_masks(ex.input_ids, [(3, 4)], rng, tokenizer, ex.special_mask)
        assert labels[3] == original[3] and (labels[np.arange(len(labels)) != 3] == -100).all()
        if ids[3] == tokenizer.mask_token_id:
            outcomes["mask"] += 1
        elif ids[3] == original[3]:
            outcomes["keep"] += 1
        else:
            outcomes["random"] += 1
            assert ids[3] not in tokenizer.all_special_ids
    assert abs(outcomes["mask"] / 4000 - 0.8) < 0.03
    assert abs(outcomes["random"] / 4000 - 0.1) < 0.02
    assert abs(outcomes["keep"] / 4000 - 0.1) < 0.02


def test_random_replacements_are_real_tokens(tokenizer):
    pool = replacement_ids(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(pool.tolist())
    assert len(pool) > 20000 and not any(t.startswith("[") for t in tokens)


def test_people_daily_words_used_for_whole_words(tokenizer, people_daily_docs):
    doc = next(d for d in people_daily_docs if "江泽民" in d.text)
    ex = encode_example(tokenizer, doc.text, pos_words=doc.words)
    WholeWordMasker().select_spans(ex, np.random.default_rng(0), 5)
    assert ex.word_spans == [(s, e) for s, e, _ in doc.words]
