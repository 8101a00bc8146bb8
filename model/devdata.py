"""Small real-text shards for tests, demos and the throughput benchmark.

Reads lines of the shipped corpora (People's Daily with its POS tags stripped, product reviews),
tokenises them with the BERT Chinese WordPiece vocabulary, applies plain 15% token masking
(80% [MASK], 10% random, 10% kept; [CLS]/[SEP] never masked) and packs them with ShardWriter.
`wenzhi pretrain prepare` is the full pipeline (whole-word and knowledge masking); this is the
minimal one the encoder's own tests and benchmark need, kept independent of it.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from wenzhi.model.shards import IGNORE_INDEX, PackedExample, ShardWriter

_POS_TAG = re.compile(r"/[A-Za-z]+\s*")


def read_corpus_lines(corpus: str = "people_daily", limit: int | None = None) -> list[str]:
    """Non-empty lines of a shipped corpus: "people_daily" (POS tags stripped) or "reviews"."""
    from wenzhi.kg.datadir import data_path

    if corpus == "people_daily":
        path, strip = data_path("corpus/people_daily_1998_pos.txt"), True
    elif corpus == "reviews":
        path, strip = data_path("corpus/reviews_pos.txt"), False
    else:
        raise ValueError(f"unknown corpus {corpus!r}: people_daily or reviews")
    lines = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            text = _POS_TAG.sub("", line).strip() if strip else line.strip()
            if text:
                lines.append(text)
                if limit is not None and len(lines) >= limit:
                    break
    return lines


def bert_chinese_tokenizer(vocab_file: str | Path | None = None):
    """The data engineer's load_tokenizer when present, else the same vocabulary through BertTokenizerFast."""
    try:
        from wenzhi.model.tokenizer import load_tokenizer

        return load_tokenizer(vocab_file)
    except ImportError:
        from transformers import BertTokenizerFast

        from wenzhi.kg.datadir import data_path

        return BertTokenizerFast(vocab_file=str(vocab_file or data_path("vocab/bert_chinese_vocab.txt")))


def random_mask(ids: np.ndarray, rng: np.random.Generator, vocab_size: int, mask_id: int,
                special: np.ndarray, probability: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """BERT's 80/10/10 token masking; returns (input_ids, labels)."""
    candidates = np.nonzero(~special)[0]
    n = max(1, int(round(len(candidates) * probability))) if len(candidates) else 0
    chosen = rng.choice(candidates, size=n, replace=False) if n else np.array([], dtype=np.int64)
    labels = np.full_like(ids, IGNORE_INDEX)
    labels[chosen] = ids[chosen]
    out = ids.copy()
    action = rng.random(n)
    out[chosen[action < 0.8]] = mask_id
    swap = chosen[(action >= 0.8) & (action < 0.9)]
    out[swap] = rng.integers(1000, vocab_size, size=len(swap))  # skip [unused*] and specials
    return out, labels


def tokenize_lines(lines: list[str], tokenizer, max_length: int) -> list[list[int]]:
    enc = tokenizer(lines, truncation=True, max_length=max_length, add_special_tokens=True)
    return enc["input_ids"]


def write_text_shards(out_dir: str | Path, token_lists: list[list[int]], seq_len: int, tokenizer,
                      seed: int = 0, probability: float = 0.15, kind: int = 0, tokenizer_name: str | None = None,
                      overwrite: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    special_ids = np.asarray(sorted(set(tokenizer.all_special_ids)))
    vocab_size = len(tokenizer)
    with ShardWriter(out_dir, seq_len=seq_len, vocab_size=vocab_size, tokenizer=tokenizer_name,
                     overwrite=overwrite) as writer:
        for tokens in token_lists:
            ids = np.asarray(tokens, dtype=np.int64)
            masked, labels = random_mask(ids, rng, vocab_size, tokenizer.mask_token_id,
                                         np.isin(ids, special_ids), probability)
            writer.add(PackedExample(masked, labels, kind=kind))
        return writer.close()


def main(argv: list[str] | None = None) -> int:
    """`python -m wenzhi.model.devdata OUT_DIR [--corpus people_daily] [--lines N] [--seq-len 128]`."""
    import argparse

    parser = argparse.ArgumentParser(description="plain-masked packed shards from a shipped corpus")
    parser.add_argument("out_dir")
    parser.add_argument("--corpus", choices=["people_daily", "reviews"], default="people_daily")
    parser.add_argument("--lines", type=int, default=None, help="first N lines (default: all)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    tok = bert_chinese_tokenizer()
    lines = read_corpus_lines(args.corpus, limit=args.lines)
    # long lines are tokenised whole and split into seq_len pieces by the writer, losing nothing
    token_lists = tokenize_lines(lines, tok, max_length=1_000_000)
    meta = write_text_shards(args.out_dir, token_lists, args.seq_len, tok, seed=args.seed)
    print(json.dumps({"out_dir": args.out_dir, "rows": meta["num_sequences"], **meta["stats"]}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
