"""Variant F's starting point for bench/knowledge_ablation.py: a BERT-style checkpoint to continue from.

No hub weights exist here, so the stand-in for a downloaded Chinese BERT is made the way one is
made: transformers' `BertForMaskedLM` (post-LN, absolute positions) of the ablation model's shape
(universal + NLU layers, same width), trained with a plain masked-LM loop on variant A's shards
(the same corpus slice, plain character masking) in an order of its own. The folder it leaves is
an ordinary Hugging Face one; the F runs start from it through `wenzhi pretrain run --init`'s path
(`model/pretrained.py`'s import, as a user's bert-base-chinese would), and F0 evaluates the import
itself, not continued. Its cost (steps, tokens, FLOPs, CPU and wall seconds) is reported beside the
continued runs': what F's head start cost.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

BERT_SEED = 1000  # its own data order and init, apart from every run's seeds (0, 1, 2, ...)


def bert_config(model: dict, vocab_size: int, pad_token_id: int):
    """BertConfig of the ablation model's shape: its universal + NLU layers as BERT's stack (the
    import splits them back the same way: model/hf_convert.py)."""
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab_size, hidden_size=model["hidden_size"],
                      num_hidden_layers=model["num_universal_layers"] + model["num_nlu_layers"],
                      num_attention_heads=model["num_attention_heads"], intermediate_size=model["intermediate_size"],
                      hidden_dropout_prob=model.get("hidden_dropout_prob", 0.1),
                      attention_probs_dropout_prob=model.get("attention_probs_dropout_prob", 0.1),
                      max_position_embeddings=512, pad_token_id=pad_token_id)


def build_bert(out: Path, shards: Path, model: dict, steps: int, batch_size: int, seq_len: int,
               learning_rate: float, threads: int) -> dict:
    """Train the stand-in into `out/bert` (a BertForMaskedLM folder with its vocabulary) and its
    wenzhi import into `out/as-wenzhi` (what F0 evaluates); `out/bert.json` is its cost. Kept when
    already there; written beside and renamed, so an interrupted build leaves nothing half made."""
    if (out / "bert.json").exists():
        return json.loads((out / "bert.json").read_text(encoding="utf-8"))
    import numpy as np
    import torch
    from hf_import import masked_lm_loss  # bench/ is on sys.path
    from transformers import BertForMaskedLM, get_linear_schedule_with_warmup

    from wenzhi.model.checkpoint import save_model_folder
    from wenzhi.model.flops import training_step_flops
    from wenzhi.model.modeling import WenzhiForPretraining
    from wenzhi.model.pretrained import checkpoint_tokenizer, load_for_init
    from wenzhi.model.tokenizer import load_tokenizer
    from wenzhi.model.trainer import Phase, PhaseData
    from wenzhi.retrieval.atomic import atomic_directory

    torch.set_num_threads(threads)
    torch.manual_seed(BERT_SEED)
    tokenizer = load_tokenizer()  # the vocabulary every variant's shards were made with
    bert = BertForMaskedLM(bert_config(model, len(tokenizer), tokenizer.pad_token_id))
    data = PhaseData(Phase(shards=str(shards), steps=steps, batch_size=batch_size, order="shuffle"), 0, BERT_SEED, 0, 1)
    optimizer = torch.optim.AdamW(bert.parameters(), lr=learning_rate, weight_decay=0.01)
    schedule = get_linear_schedule_with_warmup(optimizer, max(1, int(0.06 * steps)), steps)
    wall, cpu = time.perf_counter(), time.process_time()
    losses, tokens, masked = [], 0, 0
    bert.train()
    for step in range(steps):
        b = data.batch(step)
        real = b["document_ids"] >= 0
        # the head at the masked positions only (bench/hf_import.py): BertForMaskedLM's own loss
        # projects all 4,096 positions onto 21,128 tokens, 2 CPU-s a step at this size, 7x the work
        loss = masked_lm_loss(bert, torch.from_numpy(b["input_ids"].astype(np.int64)),
                              torch.from_numpy(real.astype(np.int64)), torch.from_numpy(b["labels"].astype(np.int64)))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(bert.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        tokens += int(real.sum())
        masked += int((b["labels"] != -100).sum())
        if step % max(1, steps // 10) == 0:
            print(f"bert step {step}/{steps} loss {losses[-1]:.3f}", flush=True)
    cost = {"steps": steps, "tokens": tokens, "masked_tokens": masked, "token_slots": steps * batch_size * seq_len,
            "cpu_seconds": round(time.process_time() - cpu, 1), "seconds": round(time.perf_counter() - wall, 1),
            "first_loss": round(float(np.mean(losses[: max(1, steps // 20)])), 4),
            "last_loss": round(float(np.mean(losses[-max(1, steps // 20):])), 4)}
    with atomic_directory(out) as staging:
        staging = Path(staging)
        bert.eval().save_pretrained(staging / "bert")
        shutil.copyfile(tokenizer.name_or_path, staging / "bert" / "vocab.txt")
        imported, _ = load_for_init(WenzhiForPretraining, staging / "bert")
        save_model_folder(imported, staging / "as-wenzhi", checkpoint_tokenizer(staging / "bert"))
        # the project's FLOPs formula for the imported shape; BERT's head scores every position
        # (transformers' BertForMaskedLM), wenzhi's only the masked ones, so this is a lower bound
        slots = steps * batch_size * seq_len
        cost["flops"] = float(f"{training_step_flops(imported.config, slots, seq_len, masked):.4g}")
        (staging / "bert.json").write_text(json.dumps(cost, indent=1), encoding="utf-8")
    return cost
