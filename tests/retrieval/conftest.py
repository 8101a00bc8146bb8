"""Fixtures for the retrieval tests: real CMRC 2018 passages, a tiny real BERT encoder saved to
disk (random weights, the Chinese vocabulary). The osmem-server fixtures are in tests/conftest.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def cmrc_dev(data_dir) -> dict:
    with open(data_dir / "cmrc2018" / "cmrc2018_dev.json", encoding="utf-8") as fh:
        return json.load(fh)


@pytest.fixture(scope="session")
def cmrc_passages(cmrc_dev):
    """The first 150 paragraphs of CMRC 2018 dev as Documents, and (question, paragraph id) pairs."""
    from wenzhi.retrieval.documents import Document

    docs, questions = [], []
    for article in cmrc_dev["data"]:
        for para in article["paragraphs"]:
            if len(docs) == 150:
                return docs, questions
            doc_id = f"passage:{para['id']}"
            docs.append(Document(doc_id, "passage", article["title"], para["context"]))
            questions += [(qa["question"], doc_id) for qa in para["qas"]]
    return docs, questions


def save_tiny_bert(path: Path, vocab_file: Path, seed: int) -> Path:
    """A 2-layer BERT with random weights and the real Chinese WordPiece vocabulary."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    torch.manual_seed(seed)
    # transformers 5 reads `vocab=`; `vocab_file=` is silently ignored (a 5-token vocabulary).
    tokenizer = BertTokenizerFast(vocab=str(vocab_file))
    assert tokenizer.vocab_size == 21128, tokenizer.vocab_size
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=256)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_encoder_dirs(data_dir, tmp_path_factory) -> tuple[Path, Path]:
    """Two checkpoints of the same architecture with different weights (an 'old' and a 'new')."""
    vocab = data_dir / "vocab" / "bert_chinese_vocab.txt"
    root = tmp_path_factory.mktemp("encoders")
    return save_tiny_bert(root / "enc_a", vocab, 0), save_tiny_bert(root / "enc_b", vocab, 1)
