"""ShardWriter packing and ShardReader on real People's Daily text."""
from __future__ import annotations

import json

import numpy as np
import pytest

from wenzhi.model.shards import PackedDataset, PackedExample, ShardReader, ShardWriter


def _docs(rng, n, max_len=40, kinds=(0, 2)):
    out = []
    for i in range(n):
        length = int(rng.integers(1, max_len))
        ids = rng.integers(1000, 20000, length)
        labels = np.where(rng.random(length) < 0.15, ids, -100)
        out.append(PackedExample(ids, labels, np.full(length, i % 3), kind=kinds[i % len(kinds)]))
    return out


def test_packing_keeps_every_document_whole_and_kinds_apart(tmp_path):
    rng = np.random.default_rng(0)
    docs = _docs(rng, 300) + [PackedExample(np.arange(1000, 1150), np.full(150, -100), kind=0)]  # > seq_len
    with ShardWriter(tmp_path / "s", seq_len=64, vocab_size=21128, rows_per_shard=50, open_rows=8) as w:
        for d in docs:
            w.add(d)
    reader = ShardReader(tmp_path / "s")
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert len(meta["shards"]) > 1 and len(reader) == meta["num_sequences"]
    assert not (tmp_path / "s.partial").exists()
    rows = reader.batch(np.arange(len(reader)))
    found = []
    for r in range(len(reader)):
        doc = rows["document_ids"][r]
        real = doc >= 0
        assert real[: real.sum()].all()  # padding only at the end
        assert (np.diff(doc[real]) >= 0).all() and (np.diff(doc[real]) <= 1).all()
        for d in np.unique(doc[real]):
            sel = doc == d
            found.append((int(rows["kind"][r]), tuple(rows["input_ids"][r][sel]), tuple(rows["labels"][r][sel]),
                          tuple(rows["token_type_ids"][r][sel])))
    expected = [(d.kind, tuple(d.input_ids), tuple(d.labels), tuple(d.token_type_ids)) for d in docs[:-1]]
    expected += [(0, tuple(range(1000 + s, min(1150, 1000 + s + 64))), (-100,) * len(range(s, min(150, s + 64))),
                  (0,) * len(range(s, min(150, s + 64)))) for s in (0, 64, 128)]
    assert sorted(found) == sorted(expected)  # every document exactly once, kinds never mixed in a row
    assert meta["stats"]["padding_fraction"] < 0.1
    assert meta["stats"]["masked_tokens"] == sum(int((np.asarray(d.labels) != -100).sum()) for d in docs)
    item = PackedDataset(tmp_path / "s")[3]
    assert item["input_ids"].shape == (64,) and item["kind"].ndim == 0


def test_interrupted_writer_leaves_nothing_and_bad_input_is_refused(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "s", seq_len=16, vocab_size=100) as w:
            w.add(PackedExample([1, 2, 3], [-100, 2, -100]))
            raise RuntimeError("killed")
    assert not (tmp_path / "s").exists() and not (tmp_path / "s.partial").exists()
    w = ShardWriter(tmp_path / "t", seq_len=16, vocab_size=100, overflow="error")
    with pytest.raises(ValueError, match="out of range"):
        w.add(PackedExample([1, 200], [-100, -100]))
    with pytest.raises(ValueError, match="exceeds seq_len"):
        w.add(PackedExample(list(range(20)), [-100] * 20))
    with pytest.raises(ValueError, match="differ"):
        w.add(PackedExample([1, 2], [-100]))
    w.abort()
    with pytest.raises(FileNotFoundError, match="meta.json"):
        ShardReader(tmp_path / "t")


def test_real_text_shards_pack_tightly(tmp_path):
    from wenzhi.model.devdata import bert_chinese_tokenizer, read_corpus_lines, tokenize_lines, write_text_shards

    tok = bert_chinese_tokenizer()
    lines = read_corpus_lines("people_daily", limit=400)
    token_lists = tokenize_lines(lines, tok, 128)
    meta = write_text_shards(tmp_path / "pd", token_lists, 128, tok, seed=1)
    assert meta["stats"]["documents"] == len(lines)
    assert meta["stats"]["tokens"] == sum(map(len, token_lists))
    assert meta["stats"]["padding_fraction"] < 0.05
    ratio = meta["stats"]["masked_tokens"] / (meta["stats"]["tokens"] - 2 * len(lines))
    assert 0.13 < ratio < 0.17
    rows = ShardReader(tmp_path / "pd").batch(np.arange(meta["num_sequences"]))
    masked = rows["labels"] != -100
    assert not np.isin(rows["labels"][masked], [101, 102, 0]).any()  # specials never masked
