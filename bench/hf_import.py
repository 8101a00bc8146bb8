"""Pretrained checkpoints in: import fidelity, what a memorised BERT keeps, and continued pretraining
from an imported BERT against training from scratch, at equal steps.

    WENZHI_DATA=../shared/data .venv/bin/python bench/hf_import.py

1. fidelity: random `BertForMaskedLM`, `BertModel` (no `bert.` prefix, no MLM head),
   `ErnieForMaskedLM` and `ErnieModel` (task-type embeddings) of BERT-small shape with the BERT
   Chinese vocabulary, saved, then `wenzhi pretrain convert --from-hf`; the max abs difference of
   the last hidden states and MLM logits on real People's Daily lines (a padded batch, both
   segments), and again after `--to-hf` (loaded by plain `BertForMaskedLM`).
2. memorise: a 4-layer `BertForMaskedLM` trained with transformers until it predicts the fixed
   masks of 128 People's Daily sequences; masked-token accuracy of that BERT, of its wenzhi import,
   and of the most-frequent-character guess (the issue measured 98.6% -> 6.0% with the old mapping).
3. continue: no pretrained Chinese BERT exists here, so one is made: `BertForMaskedLM` (hidden 128,
   4 layers) trained with transformers (run_mlm's default: concatenated 64-token blocks, 15%
   masking) on People's Daily lines A for --bert-steps. Then `wenzhi pretrain run` on shards of
   lines B, --steps steps each, same optimiser settings: (a) `--init` that BERT, (b) from scratch
   with the same BERT-style architecture (post-LN, absolute positions), (c) from scratch with the
   default one (pre-LN, rotary). MLM loss and accuracy on held-out lines C (fixed masks), at step
   0 and after. Lines A, B and C do not overlap.
All on CPU, one thread. The last line printed is a JSON object with every figure.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wenzhi.model.tokenizer import save_tokenizer  # noqa: E402


def masked_lm_loss(bert, input_ids, attention_mask, labels):
    """BertForMaskedLM's loss, its head applied at the masked positions only: the same value, a
    seventh of the vocabulary projection (which dominates a small model's step)."""
    import torch.nn.functional as F

    hidden = bert.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    keep = labels != -100
    return F.cross_entropy(bert.cls(hidden[keep]), labels[keep])


def fidelity(tmp: Path, tok, lines: list[str]) -> dict:
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertModel, ErnieConfig, ErnieForMaskedLM, ErnieModel

    from wenzhi.cli import main as wenzhi_main
    from wenzhi.model.modeling import WenzhiForPretraining

    shape = dict(vocab_size=len(tok), hidden_size=256, num_hidden_layers=6, num_attention_heads=4,
                 intermediate_size=1024, max_position_embeddings=512)
    sources = {"BertForMaskedLM": lambda: BertForMaskedLM(BertConfig(**shape)),
               "BertModel (no prefix, no head)": lambda: BertModel(BertConfig(**shape)),
               "ErnieForMaskedLM (task types)": lambda: ErnieForMaskedLM(ErnieConfig(use_task_id=True, **shape)),
               "ErnieModel (no prefix, no head)": lambda: ErnieModel(ErnieConfig(use_task_id=True, **shape))}
    half = [len(line) // 2 for line in lines]
    batch = tok([l[:h] for l, h in zip(lines, half)], [l[h:] for l, h in zip(lines, half)], padding=True,
                truncation=True, max_length=128, return_tensors="pt")
    keep = batch["attention_mask"].bool()
    out = {}
    for name, build in sources.items():
        torch.manual_seed(0)
        source = build().eval()
        folder = tmp / name.split()[0]
        source.save_pretrained(folder)
        save_tokenizer(tok, folder)
        assert wenzhi_main(["pretrain", "convert", "--from-hf", str(folder), "--output", str(folder) + "-wenzhi"]) == 0
        model = WenzhiForPretraining.from_pretrained(str(folder) + "-wenzhi").eval()
        with torch.no_grad():
            ref = source(**batch, output_hidden_states=True)
            got = model(**batch, output_hidden_states=True)
        row = {"hidden": float((got.hidden_states[-1] - ref.hidden_states[-1])[keep].abs().max())}
        if "MaskedLM" in name:
            row["logits"] = float((got.logits - ref.logits)[keep].abs().max())
            assert wenzhi_main(["pretrain", "convert", "--to-hf", str(folder) + "-wenzhi", "--output", str(folder) + "-back"]) == 0
            back = BertForMaskedLM.from_pretrained(str(folder) + "-back").eval()
            with torch.no_grad():
                row["logits_after_to_hf"] = float((back(**batch).logits - ref.logits)[keep].abs().max())
        out[name] = row
        print(name, row, flush=True)
    return out


def memorise(tmp: Path, tok, lines: list[str], steps: int) -> dict:
    import numpy as np
    import torch
    from transformers import BertConfig, BertForMaskedLM

    from wenzhi.model.pretrained import load_for_init
    from wenzhi.model.modeling import WenzhiForPretraining

    enc = tok(lines, truncation=True, max_length=64, padding=True, return_tensors="pt")
    ids, attention = enc["input_ids"], enc["attention_mask"]
    special = torch.isin(ids, torch.tensor(tok.all_special_ids))
    g = torch.Generator().manual_seed(0)
    masked = (torch.rand(ids.shape, generator=g) < 0.15) & ~special
    inputs = torch.where(masked, torch.tensor(tok.mask_token_id), ids)
    labels = torch.where(masked, ids, torch.tensor(-100))
    torch.manual_seed(0)
    bert = BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                                      intermediate_size=512, max_position_embeddings=128,
                                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    opt = torch.optim.AdamW(bert.parameters(), lr=2e-3)

    def accuracy(model) -> float:
        with torch.no_grad():
            logits = model(input_ids=inputs, attention_mask=attention).logits
        return float((logits[masked].argmax(-1) == ids[masked]).float().mean())

    started = time.process_time()
    for step in range(steps):
        for rows in np.array_split(np.random.default_rng(step).permutation(len(lines)), 4):
            loss = masked_lm_loss(bert, inputs[rows], attention[rows], labels[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if step % 25 == 24:
            bert.eval()
            reached = accuracy(bert) >= 0.98
            bert.train()
            if reached:
                break
    bert.eval().save_pretrained(tmp / "memorised")
    save_tokenizer(tok, tmp / "memorised")
    model, _ = load_for_init(WenzhiForPretraining, tmp / "memorised")
    counts = torch.bincount(ids[masked], minlength=len(tok))
    return {"sequences": len(lines), "masked_tokens": int(masked.sum()), "epochs": step + 1,
            "train_cpu_s": round(time.process_time() - started, 1),
            "bert_accuracy": accuracy(bert), "wenzhi_import_accuracy": accuracy(model.eval()),
            "most_frequent_character_accuracy": float(counts.max() / masked.sum())}


def pretrain_bert(out: Path, tok, lines: list[str], steps: int, seed: int = 0) -> dict:
    """The stand-in for a downloaded Chinese BERT, trained the way run_mlm.py trains one."""
    import numpy as np
    import torch
    from transformers import BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling

    stream = [t for ids in tok(lines)["input_ids"] for t in ids]
    blocks = [stream[s:s + 64] for s in range(0, len(stream) - 64 + 1, 64)]
    collator = DataCollatorForLanguageModeling(tok, mlm=True, mlm_probability=0.15, return_tensors="pt")
    torch.manual_seed(seed)
    bert = BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                                      intermediate_size=512, max_position_embeddings=512))
    opt = torch.optim.AdamW(bert.parameters(), lr=1e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * max(0.0, 1 - s / steps))
    rng = np.random.default_rng(seed)
    started, losses = time.process_time(), []
    bert.train()
    for step in range(steps):
        batch = collator([{"input_ids": blocks[i]} for i in rng.integers(0, len(blocks), 32)])
        loss = masked_lm_loss(bert, batch["input_ids"], None, batch["labels"])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(bert.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 100 == 0:
            print(f"bert step {step} loss {loss.item():.3f}", flush=True)
    bert.eval().save_pretrained(out)
    save_tokenizer(tok, out)
    return {"steps": steps, "blocks": len(blocks), "cpu_s": round(time.process_time() - started, 1),
            "first_loss": round(float(np.mean(losses[:20])), 3), "last_loss": round(float(np.mean(losses[-20:])), 3)}


def heldout_mlm(model_dir: Path, shards: Path) -> dict:
    """MLM loss and accuracy over every held-out row (fixed masks)."""
    import torch

    from wenzhi.model.modeling import WenzhiForPretraining
    from wenzhi.model.shards import ShardReader, batch_to_tensors

    model = WenzhiForPretraining.from_pretrained(model_dir).eval()
    reader = ShardReader(shards)
    loss_sum = correct = count = 0.0
    with torch.no_grad():
        for start in range(0, len(reader), 32):
            batch = batch_to_tensors(reader.batch(list(range(start, min(start + 32, len(reader))))))
            out = model(input_ids=batch["input_ids"], labels=batch["labels"], token_type_ids=batch["token_type_ids"],
                        document_ids=batch["document_ids"])
            n = int((batch["labels"] != -100).sum())
            loss_sum, correct, count = loss_sum + float(out.mlm_loss) * n, correct + int(out.mlm_correct), count + n
    return {"mlm_loss": round(loss_sum / count, 4), "mlm_accuracy": round(correct / count, 4), "masked_tokens": int(count)}


def continued(tmp: Path, tok, vocab_file: str, lines_a, lines_b, lines_c, bert_steps: int, steps: int) -> dict:
    from wenzhi.model.checkpoint import save_model_folder
    from wenzhi.model.devdata import tokenize_lines, write_text_shards
    from wenzhi.model.modeling import WenzhiConfig, WenzhiForPretraining
    from wenzhi.model.trainer import TrainConfig, train

    report = {"bert_pretraining": pretrain_bert(tmp / "bert", tok, lines_a, bert_steps)}
    write_text_shards(tmp / "train", tokenize_lines(lines_b, tok, 128), 128, tok, seed=1, tokenizer_name=vocab_file)
    write_text_shards(tmp / "heldout", tokenize_lines(lines_c, tok, 128), 128, tok, seed=2, tokenizer_name=vocab_file)
    shape = dict(hidden_size=128, num_attention_heads=4, intermediate_size=512, num_universal_layers=2,
                 num_nlu_layers=2, num_nlg_layers=2, max_position_embeddings=512)
    bert_style = dict(norm_placement="post", position_embedding_type="absolute")
    runs = {"imported BERT (--init)": {"init_from": str(tmp / "bert")},
            "scratch, BERT-style (post-LN, absolute)": {"model": shape | bert_style},
            "scratch, default (pre-LN, rotary)": {"model": shape}}
    for name, extra in runs.items():
        out = tmp / name.split()[0] / name.split()[-1].strip("()")
        cfg = TrainConfig.from_dict({"output_dir": str(out), "shards": str(tmp / "train"), "steps": steps,
                                     "batch_size": 16, "learning_rate": 1e-3, "warmup_steps": 20, "lm_weight": 0.0,
                                     "checkpoint_every": 10**9, "log_every": 50, "num_threads": 1, "seed": 0,
                                     "report_to": "none"} | extra, Path.cwd())
        if "init_from" in extra:  # step 0: the imported model as it is
            start = heldout_mlm(tmp / "bert-as-wenzhi", tmp / "heldout") if (tmp / "bert-as-wenzhi").exists() else None
            if start is None:
                from wenzhi.model.pretrained import checkpoint_tokenizer, load_for_init

                model, _ = load_for_init(WenzhiForPretraining, tmp / "bert")
                save_model_folder(model, tmp / "bert-as-wenzhi", checkpoint_tokenizer(tmp / "bert"))
                start = heldout_mlm(tmp / "bert-as-wenzhi", tmp / "heldout")
        else:
            import torch

            torch.manual_seed(0)
            model = WenzhiForPretraining(WenzhiConfig(vocab_size=len(tok), **extra["model"]))
            save_model_folder(model, out.with_name(out.name + "-init"), tok)
            start = heldout_mlm(out.with_name(out.name + "-init"), tmp / "heldout")
        began = time.process_time()
        summary = train(cfg, resume=False, show_progress=False)
        report[name] = {"step_0": start, f"step_{steps}": heldout_mlm(Path(summary["model_dir"]), tmp / "heldout"),
                        "train_cpu_s": round(time.process_time() - began, 1)}
        print(name, report[name], flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="fidelity,memorise,continue")
    parser.add_argument("--memorise-epochs", type=int, default=400)
    parser.add_argument("--bert-steps", type=int, default=1500, help="transformers pretraining of the stand-in BERT")
    parser.add_argument("--steps", type=int, default=300, help="wenzhi continued pretraining steps per run")
    args = parser.parse_args()

    import torch
    import transformers

    from wenzhi.kg.datadir import data_path
    from wenzhi.model.devdata import read_corpus_lines
    from wenzhi.model.tokenizer import load_tokenizer

    torch.set_num_threads(1)
    vocab_file = str(data_path("vocab/bert_chinese_vocab.txt"))
    tok = load_tokenizer(vocab_file)
    lines = read_corpus_lines("people_daily", limit=19000)
    tmp = Path(tempfile.mkdtemp(prefix="wenzhi-hf-import-"))
    parts = args.parts.split(",")
    result = {"machine": platform.processor() or platform.machine(), "threads": 1, "torch": torch.__version__,
              "transformers": transformers.__version__}
    if "fidelity" in parts:
        result["fidelity"] = fidelity(tmp, tok, lines[-4:])
    if "memorise" in parts:
        result["memorise"] = memorise(tmp, tok, lines[-132:-4], args.memorise_epochs)
        print("memorise", result["memorise"], flush=True)
    if "continue" in parts:  # A: BERT pretraining, B: continued pretraining, C: held out
        result["continue"] = continued(tmp, tok, vocab_file, lines[:12000], lines[12000:16000], lines[16000:17000],
                                       args.bert_steps, args.steps)
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
