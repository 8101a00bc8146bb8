"""The one way in for everything that takes `--init`: a wenzhi checkpoint or a Hugging Face
BERT/ERNIE folder, loaded into the wenzhi class a command trains, or a clear error.

`wenzhi pretrain run --init`, every `wenzhi finetune TASK --init` and `wenzhi pretrain convert
--from-hf` call `load_for_init`. What is refused (InitError, never a random start):
  - a folder that is neither (no config.json, or a model_type other than wenzhi/bert/ernie);
  - encoder weights that do not load (missing, wrong shape); only a task head's own layers
    (a classifier, a pooler, an LM head the checkpoint lacks) may start fresh, and they are listed;
  - a vocabulary that differs from the one the data was tokenised with (`vocabulary`).
`checkpoint_tokenizer` finds the tokenizer that belongs to a checkpoint.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

FOREIGN_TYPES = ("bert", "ernie")
# WenzhiModel's modules: a checkpoint must provide all of them; only a head's own layers may start fresh
_BACKBONE = ("embeddings", "universal_layers", "nlu_layers", "nlg_layers", "nlu_norm", "nlg_norm")


class InitError(ValueError):
    """A checkpoint that cannot start a model: the message says which folder and why."""


def resolve_model_dir(path: str | Path) -> Path:
    """The model folder of `path`: itself when it holds config.json, else `path/model` (what
    `wenzhi pretrain run --output` leaves)."""
    path = Path(path)
    for candidate in (path, path / "model"):
        if (candidate / "config.json").is_file():
            return candidate
    if not path.exists():
        raise InitError(f"{path} does not exist")
    raise InitError(f"{path} holds no model (no config.json in it or in {path / 'model'})")


def checkpoint_type(folder: Path) -> str:
    try:
        model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError) as exc:
        raise InitError(f"{folder}/config.json is unreadable ({exc})") from None
    if model_type != "wenzhi" and model_type not in FOREIGN_TYPES:
        raise InitError(f"{folder} is a {model_type!r} model; --init takes a wenzhi checkpoint or a BERT/ERNIE folder")
    return model_type


def checkpoint_tokenizer(path: str | Path):
    """The tokenizer of a checkpoint: a wenzhi folder's saved tokenizer (tokenizer.json, exactly as
    it was trained with); for a BERT/ERNIE folder, its vocab.txt through wenzhi's normaliser
    (model/tokenizer.py: same ids, full-width forms no longer [UNK]), or its tokenizer.json
    when it has no vocab.txt."""
    from wenzhi.model.tokenizer import load_tokenizer

    folder = resolve_model_dir(path)
    saved = (folder / "tokenizer.json").exists()
    if saved and (checkpoint_type(folder) == "wenzhi" or not (folder / "vocab.txt").exists()):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(folder)
    if (folder / "vocab.txt").exists():
        return load_tokenizer(folder / "vocab.txt")
    raise InitError(f"{folder} holds no tokenizer (tokenizer.json or vocab.txt); save the model with its tokenizer")


def _vocabulary(tokenizer) -> list[str]:
    return [token for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])]


def check_vocabulary(folder: Path, config_vocab_size: int, expected: list[str] | None, what: str) -> None:
    """The checkpoint's vocabulary must be `expected` token for token (the data's or tokenizer's)."""
    try:
        tokens = _vocabulary(checkpoint_tokenizer(folder))
    except InitError:
        tokens = None
    if tokens is not None and len(tokens) > config_vocab_size:
        raise InitError(f"{folder}: its tokenizer has {len(tokens)} tokens, its embeddings {config_vocab_size}")
    if expected is None:
        return
    if tokens is None:
        if len(expected) != config_vocab_size:
            raise InitError(f"{folder}: {config_vocab_size} embeddings, but {what} has {len(expected)} tokens")
        return
    if tokens != list(expected):
        first = next((i for i, (a, b) in enumerate(zip(tokens, expected)) if a != b), min(len(tokens), len(expected)))
        raise InitError(
            f"{folder}: its vocabulary ({len(tokens)} tokens) differs from {what} ({len(expected)} tokens) "
            f"from id {first} on: the embeddings would be read for the wrong tokens")


def load_for_init(cls, path: str | Path, vocabulary: list[str] | None = None, vocabulary_source: str = "the data",
                  **config_overrides):
    """`cls` (a wenzhi model class) started from `path`; returns (model, report).

    `vocabulary`: the token list the model will be fed (the shards' or the task's tokenizer).
    `config_overrides` (e.g. a layer split or dropout) apply to a BERT/ERNIE import and to the
    config of a wenzhi checkpoint (num_labels, pair_interaction of a task head)."""
    folder = resolve_model_dir(path)
    kind = checkpoint_type(folder)
    if kind in FOREIGN_TYPES:
        from wenzhi.model.hf_convert import ConversionError, import_hf

        try:
            model, report = import_hf(cls, folder, **config_overrides)
        except ConversionError as exc:
            raise InitError(f"{folder}: {exc}") from None
    else:
        model, report = _load_wenzhi(cls, folder, **config_overrides)
    check_vocabulary(folder, model.config.vocab_size, vocabulary, vocabulary_source)
    report["init"] = str(folder)
    if report["fresh"]:
        log.info("init from %s: fresh (not in the checkpoint): %s", folder, ", ".join(report["fresh"]))
    return model, report


def _added_layer(key: str, saved) -> bool:
    """A layer beyond the checkpoint's own count (an override asked for more): it starts fresh."""
    module, _, rest = key.partition(".")
    counts = {"universal_layers": saved.num_universal_layers, "nlu_layers": saved.num_nlu_layers,
              "nlg_layers": saved.num_nlg_layers}
    return module in counts and rest.split(".")[0].isdigit() and int(rest.split(".")[0]) >= counts[module]


def _load_wenzhi(cls, folder: Path, **config_overrides):
    from wenzhi.model.modeling import WenzhiConfig

    saved = WenzhiConfig.from_pretrained(folder)
    config = WenzhiConfig.from_pretrained(folder, **config_overrides)
    try:
        model, info = cls.from_pretrained(folder, config=config, output_loading_info=True,
                                          ignore_mismatched_sizes=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise InitError(f"{folder}: the weights do not load ({str(exc).splitlines()[0][:300]})") from None
    prefix = "wenzhi." if hasattr(model, "wenzhi") else ""
    mismatched = [k for k, *_ in info.get("mismatched_keys", [])]
    fresh = sorted(set(info.get("missing_keys", [])) | set(mismatched))
    backbone = [k for k in fresh if k.startswith(prefix) and k[len(prefix):].split(".")[0] in _BACKBONE
                and not _added_layer(k[len(prefix):], saved)]
    if backbone:
        raise InitError(f"{folder}: encoder weights missing or of another shape: {backbone[:4]}"
                        f"{f' and {len(backbone) - 4} more' if len(backbone) > 4 else ''}")
    return model, {"source": str(folder), "model_type": "wenzhi", "fresh": fresh,
                   "unused": sorted(info.get("unexpected_keys", []))}
