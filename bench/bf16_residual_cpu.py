"""Does a bf16 residual stream (config.residual_in_fp32=False) train as well as the fp32 one?

    .venv/bin/python bench/bf16_residual_cpu.py --shards runs/demo/shards/tiny-128   # after `make demo`

The option is a GPU speed lever (bench/gpu_mfu_check.sh measures the speed); this checks its other
side on CPU: the tiny config's model (model/configs/tiny.yaml) trained twice from one initialisation
on the same batches under bf16 autocast, once with each stream, MLM loss only, AdamW with the tiny
config's schedule. The shards' last `--heldout` share of rows is never trained on; its MLM loss is
evaluated in fp32 without autocast (the trained weights, not the rounding, are compared), per seed.
Prints one line per seed and, last, a JSON object with every figure.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from wenzhi.model.modeling import WenzhiConfig, WenzhiForPretraining  # noqa: E402
from wenzhi.model.shards import ShardReader, batch_to_tensors  # noqa: E402

TINY = dict(hidden_size=64, num_attention_heads=4, intermediate_size=256, num_universal_layers=2, num_nlu_layers=1,
            num_nlg_layers=0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
EVAL_BATCH = 64  # held-out rows per forward pass (evaluation only: no effect on the figures)


def mlm_loss(model, reader, rows, autocast: bool) -> torch.Tensor:
    batch = batch_to_tensors(reader.batch(rows))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        return model(input_ids=batch["input_ids"], labels=batch["labels"], token_type_ids=batch["token_type_ids"],
                     document_ids=batch["document_ids"], kind=batch["kind"]).mlm_loss


def heldout_loss(model, reader, rows, batch_size: int) -> float:
    model.eval()
    with torch.no_grad():
        losses = [float(mlm_loss(model, reader, rows[i:i + batch_size], autocast=False))
                  for i in range(0, len(rows), batch_size)]
    model.train()
    return statistics.fmean(losses)


def train(model, reader, order, steps: int, batch_size: int, lr: float, warmup: int) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup))))
    losses = []
    for step in range(steps):
        start = (step * batch_size) % (len(order) - batch_size + 1)
        loss = mlm_loss(model, reader, np.sort(order[start:start + batch_size]), autocast=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shards", required=True, type=Path, help="a `wenzhi pretrain prepare` output folder")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--heldout", type=float, default=0.1, help="share of rows (the last ones) never trained on")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    torch.set_num_threads(1)
    reader = ShardReader(args.shards)
    n_heldout = max(args.batch_size, int(len(reader) * args.heldout))
    train_rows, heldout_rows = np.arange(len(reader) - n_heldout), np.arange(len(reader) - n_heldout, len(reader))
    print(f"{args.shards}: {len(reader)} rows of {reader.seq_len}, {len(heldout_rows)} held out; "
          f"{args.steps} steps of {args.batch_size} under bf16 autocast", flush=True)
    per_seed = []
    for seed in args.seeds:
        order = np.random.default_rng(seed).permutation(train_rows)
        torch.manual_seed(seed)
        fp32 = WenzhiForPretraining(WenzhiConfig(vocab_size=reader.meta["vocab_size"], **TINY))
        bf16 = WenzhiForPretraining(WenzhiConfig(vocab_size=reader.meta["vocab_size"], residual_in_fp32=False, **TINY))
        bf16.load_state_dict(fp32.state_dict())
        row = {"seed": seed, "heldout_before": heldout_loss(fp32, reader, heldout_rows, EVAL_BATCH)}
        for name, model in (("fp32_stream", fp32), ("bf16_stream", bf16)):
            t0 = time.process_time()
            losses = train(model, reader, order, args.steps, args.batch_size, args.lr, args.warmup)
            row[name] = {"train_last_20": round(statistics.fmean(losses[-20:]), 4),
                         "heldout": round(heldout_loss(model, reader, heldout_rows, EVAL_BATCH), 4),
                         "cpu_s": round(time.process_time() - t0, 1)}
        row["heldout_bf16_over_fp32"] = round(row["bf16_stream"]["heldout"] / row["fp32_stream"]["heldout"], 4)
        per_seed.append(row)
        print(f"seed {seed}: held-out MLM loss {row['heldout_before']:.3f} before; after: fp32 stream "
              f"{row['fp32_stream']['heldout']:.4f}, bf16 stream {row['bf16_stream']['heldout']:.4f} "
              f"(ratio {row['heldout_bf16_over_fp32']})", flush=True)
    ratios = [r["heldout_bf16_over_fp32"] for r in per_seed]
    print(json.dumps({"shards": str(args.shards), "steps": args.steps, "batch_size": args.batch_size,
                      "heldout_rows": len(heldout_rows), "per_seed": per_seed,
                      "heldout_ratio_median": round(statistics.median(ratios), 4), "heldout_ratio_range": [min(ratios), max(ratios)]}))


if __name__ == "__main__":
    main()
