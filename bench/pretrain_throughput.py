"""Pretraining throughput: wenzhi's training step vs Hugging Face BertForMaskedLM (sdpa), same text.

    .venv/bin/python bench/pretrain_throughput.py                 # hidden 256, 4 layers
    .venv/bin/python bench/pretrain_throughput.py --size base     # BERT-base: hidden 768, 12 layers

Both models get the same real lines (People's Daily, POS tags stripped), tokenised with the BERT
Chinese vocabulary and truncated to --seq-len, with 15% masking. Hugging Face is measured twice,
as its `run_mlm.py` feeds text in its two modes:
  - `--line_by_line` ("hf"): one example per line, shuffled, DataCollatorForLanguageModeling
    padding each batch to its longest line (its most padding-heavy setting);
  - the default ("hf_concat"): the same token lists concatenated and cut into --seq-len blocks
    (run_mlm's group_texts: no padding, attention runs across line boundaries), shuffled blocks.
  BertForMaskedLM with attn_implementation="sdpa" projects every position to the vocabulary.
  - wenzhi: the same token lists packed by ShardWriter into --seq-len rows (block-diagonal
    attention, rotary positions restarting per line), masked-only MLM head. Rows per batch are
    chosen so that both systems see about the same number of real tokens per optimizer step.
Same width, depth (wenzhi universal + NLU layers = BERT layers; wenzhi's NLG branch is not built
or run here, since BERT has no counterpart), heads, FFN size, vocabulary, dropout 0.1. Each side
steps the AdamW its trainer uses: wenzhi's training toolkit (`model/training_loop.py` `adamw`, BERT's
two decay groups, fused), Hugging Face's Trainer default (`adamw_torch_fused`) for both HF modes.
A step is forward + backward + optimizer step. Wall-clock tokens/s are the headline figures; tokens
per CPU-second of this process are reported too, because on a shared machine wall time includes
waiting for other processes (the ratio in CPU time is the steadier one). Steps alternate between the systems in rounds
(order flipped every round) so that load from other processes hits both alike. Tokens/s counts
real tokens only (no padding). The last line printed is a JSON object.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/

from machine_facts import machine_facts  # noqa: E402  (bench/)

SIZES = {
    "small": dict(hidden=256, layers=4, heads=4, intermediate=1024, batch_lines=32),
    "base": dict(hidden=768, layers=12, heads=12, intermediate=3072, batch_lines=16),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--corpus", choices=["people_daily", "reviews"], default="people_daily")
    parser.add_argument("--lines", type=int, default=3000, help="corpus lines to use")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-lines", type=int, help="HF batch size in lines (default by size)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps-per-round", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--levers", action="store_true",
                        help="also time wenzhi on HF's padded line-by-line batches (separates packing from the rest) "
                             "and wenzhi with PyTorch's per-parameter AdamW (what the fused optimizer saves)")
    args = parser.parse_args()

    import numpy as np
    import torch
    from transformers import BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling

    from wenzhi.model.devdata import bert_chinese_tokenizer, read_corpus_lines, tokenize_lines, write_text_shards
    from wenzhi.model.modeling import WenzhiConfig, WenzhiForPretraining
    from wenzhi.model.shards import ShardReader, batch_to_tensors
    from wenzhi.model.training_loop import adamw

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    size = SIZES[args.size]
    batch_lines = args.batch_lines or size["batch_lines"]
    tok = bert_chinese_tokenizer()
    lines = read_corpus_lines(args.corpus, limit=args.lines)
    token_lists = tokenize_lines(lines, tok, args.seq_len)
    mean_len = float(np.mean([len(t) for t in token_lists]))

    # --- Hugging Face side: line by line, dynamic padding per batch
    collator = DataCollatorForLanguageModeling(tok, mlm=True, mlm_probability=0.15, return_tensors="pt")
    order = np.random.default_rng(args.seed).permutation(len(token_lists))
    hf_batches = []
    for start in range(0, len(order) - batch_lines + 1, batch_lines):
        hf_batches.append([{"input_ids": token_lists[i]} for i in order[start : start + batch_lines]])
    # --- Hugging Face, run_mlm's default: concatenate, cut into seq_len blocks (group_texts)
    stream = [t for i in order for t in token_lists[i]]
    blocks = [stream[s : s + args.seq_len] for s in range(0, len(stream) - args.seq_len + 1, args.seq_len)]

    # --- wenzhi side: the same token lists packed into rows
    tmp = Path(tempfile.mkdtemp(prefix="wenzhi-bench-"))
    meta = write_text_shards(tmp / "shards", token_lists, args.seq_len, tok, seed=args.seed)
    reader = ShardReader(tmp / "shards")
    rows_per_batch = max(1, round(batch_lines * mean_len / args.seq_len))
    row_order = np.random.default_rng(args.seed).permutation(len(reader))
    wz_batches = [row_order[s : s + rows_per_batch] for s in range(0, len(row_order) - rows_per_batch + 1, rows_per_batch)]
    block_order = np.random.default_rng(args.seed + 1).permutation(len(blocks))  # same real tokens per step
    concat_batches = [[{"input_ids": blocks[i]} for i in block_order[s : s + rows_per_batch]]
                      for s in range(0, len(block_order) - rows_per_batch + 1, rows_per_batch)]

    common = dict(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, intermediate_size=size["intermediate"])
    bert_config = BertConfig(vocab_size=len(tok), hidden_size=size["hidden"], num_hidden_layers=size["layers"],
                             num_attention_heads=size["heads"], max_position_embeddings=512, **common)
    hf = BertForMaskedLM._from_config(bert_config, attn_implementation="sdpa")
    assert hf.config._attn_implementation == "sdpa", hf.config._attn_implementation
    universal = size["layers"] // 2
    wz = WenzhiForPretraining(WenzhiConfig(vocab_size=len(tok), hidden_size=size["hidden"], num_attention_heads=size["heads"],
                                           num_universal_layers=universal, num_nlu_layers=size["layers"] - universal,
                                           num_nlg_layers=0, **common))
    hf_opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, fused=True)  # TrainingArguments(optim="adamw_torch_fused")
    wz_opt = adamw(wz, 1e-4, decay_norms_and_biases=False)  # as `wenzhi pretrain run` builds it
    wz_loop = copy.deepcopy(wz) if args.levers else None  # the same model, stepped by the per-parameter loop
    wz_loop_opt = torch.optim.AdamW(wz_loop.parameters(), lr=1e-4, foreach=False) if args.levers else None
    hf.train()
    wz.train()

    hf_iter = iter(range(10**9))
    concat_iter = iter(range(10**9))

    def hf_step() -> int:
        batch = collator(hf_batches[next(hf_iter) % len(hf_batches)])
        out = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        out.loss.backward()
        hf_opt.step()
        hf_opt.zero_grad(set_to_none=True)
        return int(batch["attention_mask"].sum()), batch["input_ids"].numel()

    def hf_concat_step() -> int:  # every position is a real token: no padding, no attention mask needed
        batch = collator(concat_batches[next(concat_iter) % len(concat_batches)])
        out = hf(input_ids=batch["input_ids"], labels=batch["labels"])
        out.loss.backward()
        hf_opt.step()
        hf_opt.zero_grad(set_to_none=True)
        return batch["input_ids"].numel(), batch["input_ids"].numel()

    def packed_step(model, optimizer):
        """wenzhi's training step on the packed rows, each contender with its own data position."""
        position = iter(range(10**9))

        def step() -> int:
            batch = batch_to_tensors(reader.batch(wz_batches[next(position) % len(wz_batches)]))
            out = model(input_ids=batch["input_ids"], labels=batch["labels"], token_type_ids=batch["token_type_ids"],
                        document_ids=batch["document_ids"], kind=batch["kind"])
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return int((batch["document_ids"] >= 0).sum()), batch["input_ids"].numel()
        return step

    wz_step = packed_step(wz, wz_opt)
    wz_loop_step = packed_step(wz_loop, wz_loop_opt)  # wenzhi's step with PyTorch's per-parameter AdamW

    wzp_iter = iter(range(10**9))

    def wz_padded_step() -> int:  # wenzhi's model, HF's padded batches: everything but packing
        batch = collator(hf_batches[next(wzp_iter) % len(hf_batches)])
        out = wz(input_ids=batch["input_ids"], labels=batch["labels"], attention_mask=batch["attention_mask"])
        out.loss.backward()
        wz_opt.step()
        wz_opt.zero_grad(set_to_none=True)
        return int(batch["attention_mask"].sum()), batch["input_ids"].numel()

    def timed(step, n):
        """Wall seconds, and this process's CPU seconds: with one thread on a shared machine the
        CPU time is the work done, while wall time also counts waiting for other processes."""
        real = slots = 0
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(n):
            r, s = step()
            real, slots = real + r, slots + s
        return real, slots, time.perf_counter() - start, time.process_time() - cpu_start

    for step in (wz_step, hf_step, hf_concat_step) + ((wz_padded_step, wz_loop_step) if args.levers else ()):
        timed(step, 1)  # warm-up: allocator, oneDNN kernels, optimizer state
    totals = {name: [0, 0, 0.0, 0.0] for name in ("wenzhi", "hf", "hf_concat", "wenzhi_padded", "wenzhi_loop_adamw")}
    round_ratios, concat_round_ratios = [], []
    for r in range(args.rounds):
        pair = [("wenzhi", wz_step), ("hf", hf_step), ("hf_concat", hf_concat_step)] + (
            [("wenzhi_padded", wz_padded_step), ("wenzhi_loop_adamw", wz_loop_step)] if args.levers else [])
        per_round = {}
        for name, step in (pair if r % 2 == 0 else pair[::-1]):
            real, slots, secs, cpu = timed(step, args.steps_per_round)
            for i, value in enumerate((real, slots, secs, cpu)):
                totals[name][i] += value
            per_round[name] = real / cpu  # CPU time: the steadier measure on a shared machine
        round_ratios.append(per_round["wenzhi"] / per_round["hf"])
        concat_round_ratios.append(per_round["wenzhi"] / per_round["hf_concat"])
        print(f"round {r + 1}/{args.rounds} (tokens per CPU-s): wenzhi {per_round['wenzhi']:.0f}, "
              f"hf line-by-line {per_round['hf']:.0f} (x{round_ratios[-1]:.2f}), "
              f"hf concatenated {per_round['hf_concat']:.0f} (x{concat_round_ratios[-1]:.2f})", flush=True)

    if args.levers:
        t = totals["wenzhi_padded"]
        print(f"levers: wenzhi on padded line-by-line batches {t[0] / t[2]:.0f} tok/s "
              f"(vs hf x{(t[0] / t[2]) / (totals['hf'][0] / totals['hf'][2]):.2f}: masked-only head, fused QKV; "
              f"packing then adds x{(totals['wenzhi'][0] / totals['wenzhi'][2]) / (t[0] / t[2]):.2f})", flush=True)
        t = totals["wenzhi_loop_adamw"]
        print(f"levers: wenzhi with the per-parameter AdamW {t[0] / t[3]:.0f} tok per CPU-s; the fused one "
              f"x{(totals['wenzhi'][0] / totals['wenzhi'][3]) / (t[0] / t[3]):.3f}", flush=True)
    wz_tps = totals["wenzhi"][0] / totals["wenzhi"][2]
    hf_tps = totals["hf"][0] / totals["hf"][2]
    result = {
        "size": args.size, "hidden": size["hidden"], "layers": size["layers"], "seq_len": args.seq_len,
        "corpus": args.corpus, "lines": len(lines), "mean_line_tokens": round(mean_len, 1),
        "hf_batch_lines": batch_lines, "wenzhi_rows_per_batch": rows_per_batch,
        "hf_padding_fraction": round(1 - totals["hf"][0] / totals["hf"][1], 4),
        "wenzhi_padding_fraction": round(1 - totals["wenzhi"][0] / totals["wenzhi"][1], 4),
        "rounds": args.rounds, "steps_per_round": args.steps_per_round, "threads": args.threads,
        "round_ratio_cpu_median": round(statistics.median(round_ratios), 3),
        "round_ratio_cpu_min": round(min(round_ratios), 3), "round_ratio_cpu_max": round(max(round_ratios), 3),
        "concat_round_ratio_cpu_median": round(statistics.median(concat_round_ratios), 3),
        "concat_round_ratio_cpu_min": round(min(concat_round_ratios), 3),
        "concat_round_ratio_cpu_max": round(max(concat_round_ratios), 3),
        "hf_concat_tokens_per_cpu_s": round(totals["hf_concat"][0] / totals["hf_concat"][3], 1),
        "hf_concat_tokens_per_s": round(totals["hf_concat"][0] / totals["hf_concat"][2], 1),
        "ratio_vs_concat_cpu_time": round((totals["wenzhi"][0] / totals["wenzhi"][3])
                                          / (totals["hf_concat"][0] / totals["hf_concat"][3]), 3),
        "ratio_vs_concat": round(wz_tps / (totals["hf_concat"][0] / totals["hf_concat"][2]), 3),
        **({"wenzhi_padded_tokens_per_s": round(totals["wenzhi_padded"][0] / totals["wenzhi_padded"][2], 1),
            "wenzhi_padded_tokens_per_cpu_s": round(totals["wenzhi_padded"][0] / totals["wenzhi_padded"][3], 1),
            "wenzhi_loop_adamw_tokens_per_cpu_s": round(totals["wenzhi_loop_adamw"][0] / totals["wenzhi_loop_adamw"][3], 1)}
           if args.levers else {}),
        "wenzhi_tokens_per_cpu_s": round(totals["wenzhi"][0] / totals["wenzhi"][3], 1),
        "hf_tokens_per_cpu_s": round(totals["hf"][0] / totals["hf"][3], 1),
        "ratio_cpu_time": round((totals["wenzhi"][0] / totals["wenzhi"][3]) / (totals["hf"][0] / totals["hf"][3]), 3),
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(), "host": machine_facts(),
        "wenzhi_tokens_per_s": round(wz_tps, 1), "hf_tokens_per_s": round(hf_tps, 1), "ratio": round(wz_tps / hf_tps, 3),
    }
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
