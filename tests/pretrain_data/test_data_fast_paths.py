"""The hand-written fast paths of `pretrain prepare` give exactly what the libraries they stand in
for give: CharTableEncoder the Rust tokenizer's ids and offsets, prepare_seeds.generators numpy's
`default_rng([seed, corpus, index])`. (The whole corpus: bench/tokenizer_fast_path.py.)"""
from __future__ import annotations

import numpy as np
import pytest

from wenzhi.model.prepare_seeds import generators
from wenzhi.model.tokenizer import CharTableEncoder

# text the table must hand to the tokenizer, or must not: combining marks after a table character,
# compositions NFKC merges, full-width forms, whitespace kinds, control and private characters,
# characters outside the BMP, added tokens, and empty texts
EDGE_CASES = ["", " ", "中\u0301国", "<\u0338中", "e\u0301中", "ab\u00a0cd中", "１２３年", "㈱公司", "[MASK]中国[UNK]",
              "中\x00国", "a\x00中", "ΑΣ'中Β", "𠮷野家", "カ\uff9e中", "\u3000中\u3000", "中" * 300, "a" * 300 + "中",
              "\ue000私\ue000", "COVID-19疫情，iPhone12售价6999元。", "\t中\n国\r\n", "中。。。！？“你好”",
              "ｗｗｗ．ａｂｃ．ｃｏｍ", "第1.5x版v2.3.1", "Ⅻ章½杯", "한국어中文", "\u200b中\u200d国", "中\ufe0f"]


def _reference(backend, texts):
    return [(np.array(e.ids, np.int32), np.array(e.offsets, np.int64).reshape(-1, 2))
            for e in backend.encode_batch(texts, add_special_tokens=False)]


def _assert_same(texts, fast, reference):
    assert len(fast) == len(reference) == len(texts)
    for text, (ids, offsets), (ref_ids, ref_offsets) in zip(texts, fast, reference):
        assert ids.dtype == ref_ids.dtype and offsets.dtype == ref_offsets.dtype, text
        assert ids.tolist() == ref_ids.tolist() and offsets.tolist() == ref_offsets.tolist(), text


def test_char_table_encoder_matches_the_tokenizer(tokenizer, review_lines, people_daily_docs, kb_store):
    backend = tokenizer.backend_tokenizer
    assert CharTableEncoder.supports(backend)
    triples = [f"{t.head}{t.relation}{t.tail}" for _, t in zip(range(2000), kb_store.iter_triples())]
    texts = EDGE_CASES + review_lines + [d.text for d in people_daily_docs] + triples
    encoder = CharTableEncoder(backend)
    _assert_same(texts, encoder.encode_batch(texts), _reference(backend, texts))
    # a second pass: characters already classified, runs from the cache; one text at a time too
    _assert_same(texts[::-1], encoder.encode_batch(texts[::-1]), _reference(backend, texts[::-1]))
    for text in EDGE_CASES:
        _assert_same([text], encoder.encode_batch([text]), _reference(backend, [text]))
    # a lone surrogate (no UTF-8 file holds one): the tokenizer refuses it, and so does the table
    with pytest.raises(TypeError):
        _reference(backend, ["中\ud800国"])
    with pytest.raises(TypeError):
        encoder.encode_batch(["中\ud800国"])


def test_char_table_encoder_declines_other_pipelines():
    from tokenizers import Tokenizer, models, pre_tokenizers

    byte_level = Tokenizer(models.BPE())
    byte_level.pre_tokenizer = pre_tokenizers.ByteLevel()
    assert not CharTableEncoder.supports(byte_level)


@pytest.mark.parametrize("seed", [0, 1234, 2**32 - 1, 2**40])
def test_generators_are_numpys(seed):
    corpus = [0, 0, 1, 3, 2, 7]
    index = [0, 1, 5, 4096, 123_456, 2**31]
    ours = generators(seed, corpus, index)
    assert len(ours) == len(index)
    for rng, c, i in zip(ours, corpus, index):
        reference = np.random.default_rng([seed, c, i])
        assert rng.bit_generator.state == reference.bit_generator.state
        assert rng.random(5).tolist() == reference.random(5).tolist()
        assert rng.integers(0, 100, 5).tolist() == reference.integers(0, 100, 5).tolist()
    assert generators(seed, [], []) == []
