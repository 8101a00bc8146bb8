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

from collections.abc import Iterable, Iterator
from pathlib import Path

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
