"""Loading what `wenzhi finetune` saved, for fine-tuning and serving alike: checkpoint directories,
their tokenizer, the SIM head of either kind; and padding token rows into a batch."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def resolve_checkpoint(path: Path) -> Path:
    """A directory with config.json, or the newest sub-directory of a run that has one."""
    path = Path(path)
    if (path / "config.json").exists():
        return path
    found = sorted((p for p in path.glob("**/config.json")), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no model checkpoint (config.json) under {path}")
    return found[-1].parent


def load_tokenizer_for(path: Path | None):
    """The checkpoint's own tokenizer (model/pretrained.py); the BERT Chinese vocabulary without one."""
    from wenzhi.model.pretrained import checkpoint_tokenizer
    from wenzhi.model.tokenizer import load_tokenizer

    return checkpoint_tokenizer(path) if path is not None else load_tokenizer(None)


def save_vocab(tokenizer, out: Path) -> None:
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    (out / "vocab.txt").write_text("".join(f"{tok}\n" for tok, _ in vocab), encoding="utf-8")


def pad_rows(rows: Sequence[Sequence[int]], value: int):
    """Rows of ids as one long tensor [len(rows), longest], `value` after each row's end."""
    import torch

    width = max((len(r) for r in rows), default=1) or 1
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
    return out


def load_sim_head(path: Path):
    """The SIM head saved at `path`: a relation-matching head or a pair classifier (config.json says)."""
    from transformers import PretrainedConfig

    from wenzhi.model.modeling import WenzhiForSequencePairClassification
    from wenzhi.model.relation_matching import WenzhiForRelationMatching

    architectures = PretrainedConfig.get_config_dict(str(path))[0].get("architectures") or []
    cls = WenzhiForRelationMatching if "WenzhiForRelationMatching" in architectures else WenzhiForSequencePairClassification
    return cls.from_pretrained(path).eval()
