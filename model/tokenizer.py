"""The Chinese WordPiece tokenizer: BERT's Chinese vocabulary (or one trained on a corpus) as a
`transformers.PreTrainedTokenizerFast` with character offsets.

Why not `BertTokenizerFast.from_pretrained(vocab)`: its normaliser keeps full-width forms
(`１９９８年`, `ＣＰＵ`) and several punctuation variants that the BERT Chinese vocabulary lacks, so
they silently become [UNK] (the complaint about ERNIE's vocabulary). We put NFKC in front of the
BERT normaliser and map the few remaining punctuation marks to vocabulary forms; offsets still
point into the original text because `tokenizers` tracks alignments through normalisation.
Latin words and numbers then split into WordPieces: the vocabulary has every `##a`..`##z`,
`##0`..`##9`.
"""
from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
DEFAULT_VOCAB = "vocab/bert_chinese_vocab.txt"
# Marks NFKC leaves alone and BERT's Chinese vocabulary lacks: map each to the nearest form it has.
_PUNCT_REPLACEMENTS = {"`": "'", "—": "-", "–": "-", "“": '"', "”": '"', "‘": "'", "’": "'", "―": "-"}


def _backend(vocab: dict[str, int], lowercase: bool = True):
    """A `tokenizers.Tokenizer` for a WordPiece vocabulary, BERT Chinese style."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=200))
    steps = [normalizers.NFKC()]
    for src, dst in _PUNCT_REPLACEMENTS.items():
        if src != dst and src not in vocab and dst in vocab:
            steps.append(normalizers.Replace(src, dst))
    steps.append(normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                            strip_accents=lowercase, lowercase=lowercase))
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def _wrap(backend):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
        cls_token="[CLS]", mask_token="[MASK]", model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def read_vocab(path: str | Path) -> dict[str, int]:
    vocab: dict[str, int] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            token = line.rstrip("\n")
            if token and token not in vocab:
                vocab[token] = len(vocab)
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ValueError(f"vocabulary {path} lacks the special tokens {missing}")
    return vocab


def load_tokenizer(path: str | Path | None = None, lowercase: bool = True):
    """Load the tokenizer: None = BERT Chinese vocabulary from the data directory; a `vocab.txt`;
    or a directory holding `vocab.txt` (as `train_tokenizer` and `save_pretrained` leave it)."""
    if path is None:
        from wenzhi.kg.datadir import data_path

        path = data_path(DEFAULT_VOCAB)
    path = Path(path)
    if path.is_dir():
        path = path / "vocab.txt"
    if not path.exists():
        raise FileNotFoundError(f"tokenizer vocabulary not found: {path}")
    tokenizer = _wrap(_backend(read_vocab(path), lowercase=lowercase))
    tokenizer.name_or_path = str(path)
    return tokenizer


def save_tokenizer(tokenizer, folder: str | Path, model_max_length: int | None = None) -> None:
    """The tokenizer beside a model: tokenizer.json + tokenizer_config.json (what AutoTokenizer and
    pipelines read, normaliser included) and vocab.txt (what `load_tokenizer(folder)` reads)."""
    folder = Path(folder)
    previous = tokenizer.model_max_length
    if model_max_length:
        tokenizer.model_max_length = model_max_length  # pipelines truncate to it
    try:
        tokenizer.save_pretrained(folder)
    finally:
        tokenizer.model_max_length = previous
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    (folder / "vocab.txt").write_text("".join(f"{token}\n" for token, _ in vocab), encoding="utf-8")


def train_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 8000,
                    min_frequency: int = 2, lowercase: bool = True):
    """Train a WordPiece vocabulary on `texts` and save it as `out_dir/vocab.txt`.

    ASCII letters and digits are always in the alphabet (alone and as `##` pieces) so a corpus
    without Latin text still gives a tokenizer that never maps Latin words or numbers to [UNK]."""
    from tokenizers import trainers

    alphabet = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    if not lowercase:
        alphabet += [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    backend = _backend({t: i for i, t in enumerate(SPECIAL_TOKENS)}, lowercase=lowercase)
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=alphabet, continuing_subword_prefix="##",
    )
    backend.train_from_iterator(_batches(texts), trainer=trainer)
    vocab = backend.get_vocab()
    # The trainer only emits `##x` for letters seen word-internally; add the rest explicitly.
    for ch in alphabet:
        for piece in (ch, "##" + ch):
            if piece not in vocab:
                vocab[piece] = len(vocab)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "vocab.txt.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        for token, _ in sorted(vocab.items(), key=lambda kv: kv[1]):
            fh.write(token + "\n")
    tmp.replace(out / "vocab.txt")
    return load_tokenizer(out, lowercase=lowercase)


def _batches(texts: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# -- fast path: the characters BERT's basic tokenizer makes tokens of their own --------------------
# In BERT's Chinese pipeline every CJK ideograph and every punctuation mark is a word of its own
# (the normaliser pads CJK with spaces, the pre-tokenizer splits punctuation off), so its id
# depends on that character alone. Chinese text is mostly such characters, and mapping them
# through a code-point table runs at numpy speed where the Rust tokenizer (`encode_batch`, one
# thread) reaches about 0.7M characters per CPU-second and was a quarter of `pretrain prepare`'s
# time (bench/RESULTS.md, issue 14). Hand-written for that measured speed only: the tokenizer
# stays the definition. Every character's class comes from the tokenizer itself (how it encodes
# "a" + c + "a"), and the other runs (Latin, digits, anything unusual) go to it unchanged.
_UNKNOWN, _OTHER, _SEPARATOR = -3, -2, -1  # table values besides ids (>= 0): a token of its own
_RUN_CACHE = 100_000  # distinct runs kept (emptied when full)
_NORMALIZERS = {"NFKC", "NFC", "NFD", "NFKD", "BertNormalizer", "Lowercase", "StripAccents", "Strip"}


class CharTableEncoder:
    """`backend.encode_batch(texts, add_special_tokens=False)`'s ids and offsets, the same arrays,
    with every character that is a token of its own looked up in a table.

    A character c is in the table when the tokenizer encodes "a" + c + "a" as "a", one token for
    c, "a" with one-character offsets: its normal form is a word on its own whatever surrounds it
    (CJK, punctuation). One encoding as nothing between the two "a" tokens makes c a separator
    (whitespace). Anything else, and a table character followed by one that can combine with it
    (a combining mark, the second half of a canonical composition: NFKC would merge the two),
    is left to the tokenizer in runs between table characters; a run holds whole words (words
    end at table characters and separators), so it encodes alone as it does in the text. Texts
    holding an added token ([MASK] ...) go to the tokenizer whole. Characters are classified as
    they are first seen (a corpus uses a few thousand)."""

    def __init__(self, backend):
        self.backend = backend
        self._table = np.full(0x110000, _UNKNOWN, dtype=np.int32)
        self._joins = np.zeros(0x110000, dtype=bool)  # combines with the character before it
        self._added = [t.content for t in backend.get_added_tokens_decoder().values()]
        self._a = backend.token_to_id("a")
        self._runs: dict[str, tuple[list[int], list[int]]] = {}  # run -> (ids, offsets flattened)

    @classmethod
    def supports(cls, backend) -> bool:
        """Whether `backend` is a pipeline whose per-character tokens this path reproduces: BERT
        pre-tokenisation, WordPiece, per-character normalisers, no truncation or padding."""
        import json

        from tokenizers.models import WordPiece
        from tokenizers.pre_tokenizers import BertPreTokenizer

        if not (isinstance(backend.model, WordPiece) and isinstance(backend.pre_tokenizer, BertPreTokenizer)):
            return False
        if backend.truncation or backend.padding or backend.token_to_id("a") is None:
            return False
        if any(t.normalized for t in backend.get_added_tokens_decoder().values()):
            return False
        spec = json.loads(backend.to_str()).get("normalizer") or {"type": "Sequence", "normalizers": []}
        steps = spec["normalizers"] if spec["type"] == "Sequence" else [spec]
        for step in steps:
            if step["type"] == "Replace":
                if len(step["pattern"].get("String") or "") != 1:
                    return False
            elif step["type"] not in _NORMALIZERS:
                return False
        return True

    def encode_batch(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(ids int32 [n], character offsets int64 [n, 2]) of each text, no special tokens."""
        if not texts:
            return []
        if self._added:
            whole = [i for i, t in enumerate(texts) if "[" in t and any(a in t for a in self._added)]
            if whole:
                return self._with_whole(texts, whole)
        joined = "".join(texts)
        codes = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
        text_starts = np.cumsum(lengths) - lengths
        new = np.unique(codes[self._table[codes] == _UNKNOWN])
        if len(new):
            self._classify(new)
        table = self._table[codes]
        safe = table >= 0
        # a table character followed by one that joins it goes to the tokenizer with it
        safe[:-1] &= ~self._joins[codes[1:]]
        other = ~safe & (table != _SEPARATOR)
        # runs of other characters, cut at text starts
        starts_run = other.copy()
        starts_run[1:] &= ~other[:-1]
        starts_run[text_starts[lengths > 0]] = other[text_starts[lengths > 0]]
        run_starts = np.flatnonzero(starts_run)
        ends_run = other.copy()
        ends_run[:-1] &= ~other[1:]
        text_ends = text_starts + lengths - 1
        ends_run[text_ends[lengths > 0]] = other[text_ends[lengths > 0]]
        run_ends = np.flatnonzero(ends_run) + 1
        safe_at = np.flatnonzero(safe)
        # the runs' encodings, each distinct run once (numbers and Latin words repeat)
        runs = [joined[a:b] for a, b in zip(run_starts.tolist(), run_ends.tolist())]
        cache = self._runs
        if len(cache) > _RUN_CACHE:
            cache.clear()
        missing = [run for run in dict.fromkeys(runs) if run not in cache]
        for run, enc in zip(missing, self.backend.encode_batch(missing, add_special_tokens=False) if missing else ()):
            cache[run] = (enc.ids, list(itertools.chain.from_iterable(enc.offsets)))
        encoded = [cache[run] for run in runs]
        counts = np.fromiter((len(ids) for ids, _ in encoded), np.int64, len(encoded))
        n_run = int(counts.sum())
        run_keys = np.repeat(run_starts, counts)
        keys = np.concatenate([safe_at, run_keys])
        ids = np.concatenate([table[safe_at], np.fromiter(itertools.chain.from_iterable(ids for ids, _ in encoded),
                                                          np.int32, n_run)])
        offsets = np.empty((len(keys), 2), dtype=np.int64)
        offsets[: len(safe_at), 0] = safe_at
        offsets[: len(safe_at), 1] = safe_at + 1
        offsets[len(safe_at):] = np.fromiter(itertools.chain.from_iterable(o for _, o in encoded), np.int64,
                                             2 * n_run).reshape(-1, 2) + run_keys[:, None]
        order = np.argsort(keys, kind="stable")
        keys, ids, offsets = keys[order], ids[order], offsets[order]
        # tokens of text i: bounds[i]:bounds[i + 1]; offsets made relative to the text's start
        bounds = np.searchsorted(keys, text_starts).tolist() + [len(keys)]
        offsets -= np.repeat(text_starts, np.diff(bounds))[:, None]
        return [(ids[a:b], offsets[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]

    def _with_whole(self, texts: list[str], whole: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Texts holding an added token through the tokenizer, the others through the table."""
        out: list = [None] * len(texts)
        for i, enc in zip(whole, self.backend.encode_batch([texts[i] for i in whole], add_special_tokens=False)):
            out[i] = (np.array(enc.ids, dtype=np.int32), np.array(enc.offsets, dtype=np.int64).reshape(-1, 2))
        rest = [i for i in range(len(texts)) if out[i] is None]
        for i, enc in zip(rest, self.encode_batch([texts[i] for i in rest]) if rest else []):
            out[i] = enc
        return out

    def _classify(self, codes: np.ndarray) -> None:
        """Table entries for new code points, from how the tokenizer encodes each between two "a"."""
        import unicodedata

        chars = [chr(c) for c in codes.tolist()]
        valid = [not 0xD800 <= c <= 0xDFFF for c in codes.tolist()]  # lone surrogates: other
        probes = [f"a{ch}a" for ch, ok in zip(chars, valid) if ok]
        encodings = iter(self.backend.encode_batch(probes, add_special_tokens=False))
        seconds = _composition_seconds()
        a = self._a
        for code, ch, ok in zip(codes.tolist(), chars, valid):
            first = unicodedata.normalize("NFKC", ch)[:1] if ok else ch
            joins = any(unicodedata.combining(x) != 0 or x in seconds for x in (ch, first))
            self._joins[code] = joins
            value = _OTHER
            if ok:
                enc = next(encodings)
                ids, offsets = enc.ids, enc.offsets
                if not joins and len(ids) == 3 and ids[0] == a == ids[2] and offsets == [(0, 1), (1, 2), (2, 3)]:
                    value = ids[1]
                elif not joins and ids == [a, a] and offsets == [(0, 1), (2, 3)]:
                    value = _SEPARATOR
            self._table[code] = value


@functools.lru_cache(maxsize=1)
def _composition_seconds() -> frozenset:
    """Characters that canonical composition (NFC, NFKC) can merge into the character before
    them: the second of every two-character canonical decomposition, and Hangul vowel and
    trailing jamo."""
    import unicodedata

    out = set(map(chr, range(0x1161, 0x1176))) | set(map(chr, range(0x11A8, 0x11C3)))
    for cp in range(0x30000):
        d = unicodedata.decomposition(chr(cp))
        if d and not d.startswith("<"):
            parts = d.split()
            if len(parts) == 2:
                out.add(chr(int(parts[1], 16)))
    return frozenset(out)
