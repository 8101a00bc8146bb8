"""The no-learning floor under the ablation's held-out MLM loss: predict every masked token by how
often that token occurs in the training text (add-one smoothed unigram), ignoring its context.

    .venv/bin/python bench/knowledge_ablation_unigram.py --work runs/knowledge-ablation-cpu

A pretrained model whose held-out loss is near this number has learnt little more than character
frequencies, which a fine-tune learns from its own data in a few steps. Reads the work folder of
bench/knowledge_ablation.py: A's shards (the plain training text, masks undone) and the held-out
shards (the same masked positions every variant is scored on). Prints one JSON object last.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from knowledge_ablation_plan import SIZES, Plan  # noqa: E402

IGNORE = -100


def token_counts(shards: Path, vocab_size: int, rows_per_read: int = 4096) -> np.ndarray:
    """How often each token id occurs in a shard folder's real tokens, masks undone."""
    from wenzhi.model.shards import ShardReader

    reader = ShardReader(shards)
    counts = np.zeros(vocab_size, np.int64)
    for start in range(0, len(reader), rows_per_read):
        rows = reader.batch(np.arange(start, min(start + rows_per_read, len(reader))))
        original = np.where(rows["labels"] != IGNORE, rows["labels"], rows["input_ids"])
        counts += np.bincount(original[rows["document_ids"] >= 0], minlength=vocab_size)
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", required=True)
    parser.add_argument("--size", default="cpu", choices=sorted(SIZES))
    args = parser.parse_args()
    from wenzhi.model.shards import ShardReader

    work = Path(args.work).resolve()
    plan = Plan(SIZES[args.size], work, str(work / "kb.sqlite"))
    cpu = time.process_time()
    vocab_size = json.loads((plan.shards("A") / "meta.json").read_text())["vocab_size"]
    counts = token_counts(plan.shards("A"), vocab_size)
    log_p = np.log((counts + 1) / (counts.sum() + vocab_size))
    heldout = ShardReader(plan.heldout)
    rows = heldout.batch(np.arange(len(heldout)))
    targets = rows["labels"][rows["labels"] != IGNORE]
    out = {"unigram_heldout_mlm_loss": round(float(-log_p[targets].mean()), 4),
           "uniform_loss": round(math.log(vocab_size), 4), "masked_tokens": int(targets.size),
           "training_tokens": int(counts.sum()), "vocab_size": vocab_size,
           "cpu_seconds": round(time.process_time() - cpu, 1)}
    print(f"held-out MLM loss of the unigram rule: {out['unigram_heldout_mlm_loss']:.4f} "
          f"(uniform {out['uniform_loss']:.4f}) on {out['masked_tokens']:,} masked tokens")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
