"""Dense text encoders: anything with `encode(texts) -> float32 [n, dim]`, `dim` and a
`fingerprint` of the model files, so an index built with other weights is detected as stale."""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

log = logging.getLogger(__name__)

# Files that decide what vectors a model directory produces.
_FINGERPRINT_GLOBS = ("config.json", "*.safetensors", "pytorch_model*.bin", "tokenizer.json", "vocab.txt", "tokenizer_config.json")


@runtime_checkable
class Encoder(Protocol):
    dim: int
    fingerprint: str

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised float32 vectors, one row per text."""


def model_fingerprint(model_dir: str | Path) -> str:
    """sha256 over the config, weights and tokenizer files of a model directory (names and bytes)."""
    model_dir = Path(model_dir)
    files = sorted({p for g in _FINGERPRINT_GLOBS for p in model_dir.glob(g)})
    if not any(p.name == "config.json" for p in files):
        raise FileNotFoundError(f"{model_dir} is not a model directory: no config.json in it")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:32]


def _load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    if not any((model_dir / f).exists() for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")):
        raise FileNotFoundError(f"{model_dir} holds no tokenizer (tokenizer.json, vocab.txt): an encoder folder "
                                "must carry the tokenizer it was trained with (every folder wenzhi saves does)")
    return AutoTokenizer.from_pretrained(model_dir)


class TransformersEncoder:
    """Mean-pooled last hidden states of a `transformers` model directory, L2-normalised.

    Loaded through transformers' Auto classes only (this layer sits below wenzhi.model): a wenzhi
    checkpoint loads because `import wenzhi` registers its classes with them (model/hub.py)."""

    def __init__(self, model_dir: str | Path, max_length: int = 128, batch_size: int = 64, device: str | None = None):
        import torch
        from transformers import AutoModel

        self.model_dir = Path(model_dir)
        self.fingerprint = model_fingerprint(self.model_dir)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModel.from_pretrained(self.model_dir).to(self.device).eval()
        self.tokenizer = _load_tokenizer(self.model_dir)
        self.dim = int(self.model.config.hidden_size)
        self.max_length = min(max_length, getattr(self.model.config, "max_position_embeddings", max_length))
        self.batch_size = batch_size

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        out = np.empty((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = [t or " " for t in texts[start : start + self.batch_size]]
                enc = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
                enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
                pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
                out[start : start + len(batch)] = pooled.cpu().numpy()
        return out


def load_encoder(model_dir: str | Path, **kwargs) -> TransformersEncoder:
    return TransformersEncoder(model_dir, **kwargs)
