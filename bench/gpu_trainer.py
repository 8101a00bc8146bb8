"""The pretraining CLI's own throughput on one GPU: tokens/s and MFU as `wenzhi pretrain run` logs them.

    python bench/gpu_trainer.py                 # BERT-large size, sequence 512, bf16, compile: ~2 min
    python bench/gpu_trainer.py --dry-run       # CPU, tiny sizes, the same code path (a test runs it)

bench/gpu_pretrain.py times a bare step (forward, backward, AdamW) and is the figure issue 14's
MFU goal is read from; users train through the trainer, which adds the data reader (shards ->
tensors), the loss over the global batch, gradient clipping, the LR schedule and its logging. This
script runs the trainer itself (`model.trainer.train`, what `wenzhi pretrain run` calls) on shards
of random tokens it writes first (speed does not depend on the text; a generated 21,128-entry
vocabulary, so no data directory is needed) with the model of gpu_pretrain.py's BERT-large row: 24
layers (12 universal + 12 NLU, no NLG branch), hidden 1024, 16 heads, FFN 4096, dropout 0.1, MLM
only (lm_weight 0), 128 rows x 512 tokens per step (65,536 tokens, one document per row),
`compile: true`, bf16. It reports the trainer's logged tokens/s and MFU per window of
`--log-every` steps; the first window holds the compile warm-up, the last is the figure.

Needs torch, transformers, accelerate and numpy, not an installed wenzhi (the checkout's folders
are imported as gpu_pretrain.py does). The last line printed is a JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_pretrain import import_wenzhi  # noqa: E402  (the same package mapping)

VOCAB = 21128
LARGE = dict(hidden_size=1024, num_attention_heads=16, intermediate_size=4096, num_universal_layers=12,
             num_nlu_layers=12, num_nlg_layers=0)
TINY = dict(hidden_size=64, num_attention_heads=4, intermediate_size=128, num_universal_layers=1,
            num_nlu_layers=1, num_nlg_layers=0)


def write_random_shards(folder: Path, rows: int, seq_len: int, seed: int = 0) -> Path:
    """`rows` documents of `seq_len` random tokens, 15% of them masked, with a generated vocabulary
    beside them (the shards name it, as `pretrain prepare` names its tokenizer)."""
    import numpy as np

    from wenzhi.model.shards import PackedExample, ShardWriter
    from wenzhi.model.tokenizer import SPECIAL_TOKENS

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL_TOKENS + [f"t{i}" for i in range(VOCAB - len(SPECIAL_TOKENS))]) + "\n",
                     encoding="utf-8")
    rng = np.random.default_rng(seed)
    mask_id = SPECIAL_TOKENS.index("[MASK]")
    with ShardWriter(folder / "shards", seq_len=seq_len, vocab_size=VOCAB, tokenizer=str(vocab)) as writer:
        for _ in range(rows):
            ids = rng.integers(len(SPECIAL_TOKENS), VOCAB, seq_len)
            masked = rng.random(seq_len) < 0.15
            writer.add(PackedExample(np.where(masked, mask_id, ids), np.where(masked, ids, -100)))
    return folder / "shards"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, a few steps: the same code path")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--json", help="also write the result object here")
    args = parser.parse_args()

    import torch

    import_wenzhi()
    from wenzhi.model.trainer import TrainConfig, train

    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        sys.exit("no CUDA device: run with --dry-run to check the code path on CPU")
    seq, rows = (512, 128) if cuda else (64, 4)
    model = dict(LARGE if cuda else TINY, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        shards = write_random_shards(Path(tmp) / "data", rows * 4, seq)
        cfg = TrainConfig.from_dict(dict(
            output_dir=str(Path(tmp) / "run"), shards=str(shards), steps=args.steps, batch_size=rows, model=model,
            lm_weight=0.0, compile=cuda, mixed_precision="bf16" if cuda else "no", warmup_steps=2,
            checkpoint_every=0, log_every=args.log_every, save_final=False, report_to="none",
            num_threads=None if cuda else 1), Path(tmp))
        summary = train(cfg, resume=False, show_progress=False)
        windows = [json.loads(line) for line in (Path(cfg.output_dir) / "train_log.jsonl").read_text().splitlines()]
    windows = [{k: w.get(k) for k in ("step", "tokens_per_s", "mfu", "loss")} for w in windows if "tokens_per_s" in w]
    for w in windows:
        mfu = f"{w['mfu'] * 100:.1f}%" if w["mfu"] is not None else "n/a"
        print(f"steps to {w['step']:>4}: {w['tokens_per_s']:>12,.0f} tokens/s  MFU {mfu}  loss {w['loss']:.3f}")
    result = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
              "model": model, "seq_len": seq, "rows_per_step": rows, "compile": cuda, "windows": windows,
              "last_window": windows[-1] if windows else None, "steps": summary["steps"],
              "wall_s": round(time.perf_counter() - start, 1)}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
