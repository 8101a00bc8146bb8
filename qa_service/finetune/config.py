"""The fine-tuning settings every task reads (`wenzhi finetune`'s flags and --config fields)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TASKS = ("ner", "sim", "gen")
NER_LABELS = 3  # O, B, I


@dataclass
class FinetuneConfig:
    task: str
    out: Path
    kb: Path
    questions: list[Path]
    init: Path | None = None  # pretrain checkpoint; None = fresh tiny model
    holdout_nlpcc: float = 0.2  # share of NLPCC train never trained on (kept for evaluation)
    limit: int | None = None
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 32
    lr: float = 5e-4
    warmup: float = 0.06
    negatives: int = 15
    freeze_universal: bool = True
    seed: int = 0
    threads: int | None = None
    size: str = "tiny"  # fresh model size when there is no `init`: tiny (tests) or small
    interaction: str = "match"  # SIM: "match" (model.relation_matching), or a pair head's pair_interaction
    sim_loss: str = "listwise"  # SIM: softmax over each question's candidates, or per-pair BCE ("pointwise")
    nlu_layers: int | None = None  # NLU layers of the head (None: the checkpoint's; added ones start fresh)
    copy_source: bool = True  # GEN: a pointer over the question's tokens (model.copying.CopyHead)
    target_layout: str = "relation-first"  # GEN: how a (head, relation) is spelt (qa_service.trie.LAYOUTS)


SIZES = {
    "tiny": dict(hidden_size=64, num_universal_layers=1, num_nlu_layers=1, num_nlg_layers=1,
                 num_attention_heads=2, intermediate_size=128),
    "small": dict(hidden_size=128, num_universal_layers=2, num_nlu_layers=1, num_nlg_layers=1,
                  num_attention_heads=2, intermediate_size=512),
}
