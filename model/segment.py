"""Chinese word segmentation and POS tags for masking: `rjieba` (jieba's Rust port) by default,
`jieba` (the Python original, through spaCy's blank Chinese pipeline) as the reference.

Why rjieba: on 8,000 review and AgriKG lines it segments 18x faster than jieba (5.6M against
0.30M characters per CPU-second) and gives the same words for 97.9% of the lines (the rest differ
in Latin and number runs: `www.abc.com`, `3-4` stay one word); its POS tags run 60x faster
than jieba.posseg, whose character-level HMM it does not replicate (see bench/RESULTS.md,
issue 14, for the phrase agreement). Why not spaCy Docs on the hot path: building a Doc cost
2-3x the segmentation itself in the profile; the `jieba` reference keeps the spaCy pipeline.
"""
from __future__ import annotations

import numpy as np

SEGMENTERS = ("rjieba", "jieba")
_NLP = None
_POS_NLP = None


def chinese_nlp():
    """spaCy's blank Chinese pipeline segmenting with jieba (offline; no model download)."""
    global _NLP
    if _NLP is None:
        import logging

        import jieba
        import spacy

        jieba.setLogLevel(logging.WARNING)
        _NLP = spacy.blank("zh", config={"nlp": {"tokenizer": {"segmenter": "jieba"}}})
    return _NLP


def _spans(words: list[str]) -> np.ndarray:
    """Character spans [n, 2] of consecutive words, whitespace-only words left out."""
    lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    ends = np.cumsum(lengths)
    spans = np.stack([ends - lengths, ends], axis=1)
    keep = [not w.isspace() for w in words]
    return spans[np.asarray(keep, dtype=bool)] if not all(keep) else spans


def word_spans(text: str, segmenter: str = "rjieba") -> np.ndarray:
    """Character spans [n, 2] of the words of `text`, whitespace left out."""
    if segmenter == "rjieba":
        import rjieba

        return _spans(rjieba.cut(text))
    if segmenter == "jieba":
        doc = chinese_nlp().make_doc(text)
        return np.array([(t.idx, t.idx + len(t.text)) for t in doc if not t.is_space], dtype=np.int64).reshape(-1, 2)
    raise ValueError(f"segmenter must be one of {SEGMENTERS}, not {segmenter!r}")


def tagged_words(text: str, segmenter: str = "rjieba") -> list[tuple[int, int, str]]:
    """Words with POS tags (jieba's ICTCLAS set) as (start, end, tag), whitespace left out."""
    if segmenter == "rjieba":
        import rjieba

        pairs = rjieba.tag(text)
    elif segmenter == "jieba":
        return _jieba_pos_words(text)
    else:
        raise ValueError(f"segmenter must be one of {SEGMENTERS}, not {segmenter!r}")
    out, pos = [], 0
    for word, tag in pairs:
        end = pos + len(word)
        if not word.isspace():
            out.append((pos, end, tag))
        pos = end
    return out


def _jieba_pos_words(text: str) -> list[tuple[int, int, str]]:
    global _POS_NLP
    if _POS_NLP is None:
        import spacy

        chinese_nlp()  # sets jieba's logging once
        _POS_NLP = spacy.blank("zh", config={"nlp": {"tokenizer": {"segmenter": "jieba"}}})
        _POS_NLP.tokenizer = _JiebaPosTokenizer(_POS_NLP.vocab)
    doc = _POS_NLP(text)
    return [(t.idx, t.idx + len(t.text), t.tag_) for t in doc if not t.is_space]


class _JiebaPosTokenizer:
    """spaCy tokenizer that segments and tags in one jieba.posseg pass (spaCy's jieba segmenter
    gives no tags, and tagging its words separately would segment twice)."""

    def __init__(self, vocab):
        self.vocab = vocab

    def __call__(self, text: str):
        import jieba.posseg
        from spacy.tokens import Doc

        pairs = [(p.word, p.flag) for p in jieba.posseg.cut(text)]
        words = [w for w, _ in pairs]
        return Doc(self.vocab, words=words, spaces=[False] * len(words), tags=[t for _, t in pairs])
