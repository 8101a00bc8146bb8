"""`wenzhi pretrain downstream`: fine-tune a pretrained checkpoint on a general NLU task and score it.

    checkpoint ──> WenzhiForTokenClassification, BIO over CLUENER 2020's 10 types ──> entity F1
              └──> WenzhiForSequencePairClassification, [CLS] headline [SEP] -> 10 classes ──> accuracy

Tasks (data under the data directory; the splits are the ones the data has):
  cluener   CLUENER 2020 (`ner/cluener/`): train on train.json, score on dev.json (test.json has no
            labels). Entity F1 is micro-averaged over exact (start, end, type) matches against the
            file's own character spans, seqeval's strict reading, so a span the tokenizer cannot
            express (a boundary inside a WordPiece) counts as missed rather than being projected.
  thucnews  THUCNews headlines (`thucnews/`): the collection here has no train split, so train on
            dev.txt and score on test.txt (`text<TAB>label`, labels index class.txt).

Fine-tuning is transformers' `Trainer` (AdamW, linear warmup and decay, clipping) over the model's
standard heads; the universal module is frozen by default, as in ERNIE 3.0 and `wenzhi finetune`,
so the score measures what pretraining put into it. Everything here is seeded: the same checkpoint,
config and seed give the same score.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

TASKS = ("cluener", "thucnews")
CLUENER_TYPES = ("address", "book", "company", "game", "government", "movie", "name", "organization",
                 "position", "scene")
# (train file, evaluation file) of each task, inside the data directory
SPLITS = {"cluener": ("ner/cluener/train.json", "ner/cluener/dev.json"),
          "thucnews": ("thucnews/dev.txt", "thucnews/test.txt")}


@dataclass
class DownstreamConfig:
    task: str
    init: str  # a pretraining checkpoint (save_pretrained directory)
    max_steps: int = 300
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    freeze_universal: bool = True
    max_length: int = 64  # CLUENER texts are at most 50 characters, THUCNews headlines about 20
    seed: int = 0
    # a sample of N examples (None: all), the same for every seed and checkpoint: the files are
    # sorted by label (THUCNews), so the first N would be one or two classes
    train_limit: int | None = None
    eval_limit: int | None = None
    threads: int | None = None
    output_dir: str | None = None  # save the fine-tuned model here (None: keep nothing)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, not {self.task!r}")


@dataclass
class EntityExample:
    text: str
    entities: list[tuple[int, int, str]]  # (start, end exclusive, type), character offsets


# -- data ------------------------------------------------------------------------------------------
def read_cluener(path: str | Path) -> list[EntityExample]:
    """CLUENER's concatenated pretty-printed JSON objects `{"text", "label": {type: {mention:
    [[start, end_inclusive], ...]}}}`. Objects that are not JSON, or whose span does not hold its
    mention, raise a ValueError naming the first one's line and how many there are."""
    text = Path(path).read_text(encoding="utf-8")
    decoder = json.JSONDecoder()
    out: list[EntityExample] = []
    bad: list[tuple[int, str]] = []
    pos = counted = 0
    line = 1
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            break
        line += text.count("\n", counted, pos)  # the object's first line, counted as we go
        counted = pos
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            bad.append((line, f"not JSON ({exc.msg})"))
            break  # the rest of the file cannot be framed
        try:
            out.append(_cluener_example(obj))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            bad.append((line, str(exc)))
    if bad:
        raise ValueError(f"{path}:{bad[0][0]}: {bad[0][1]} ({len(bad)} bad object(s) in the file)")
    return out


def _cluener_example(obj: dict) -> EntityExample:
    sentence = obj["text"]
    if not isinstance(sentence, str):
        raise ValueError("'text' is not a string")
    entities = []
    for etype, mentions in (obj.get("label") or {}).items():
        for mention, spans in mentions.items():
            for start, end in spans:
                if sentence[start : end + 1] != mention:
                    raise ValueError(f"span [{start}, {end}] of {etype} {mention!r} does not hold it")
                entities.append((int(start), int(end) + 1, etype))
    return EntityExample(sentence, sorted(entities))


def read_classes(path: str | Path) -> list[str]:
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def read_thucnews(path: str | Path, num_classes: int) -> list[tuple[str, int]]:
    """`text<TAB>label` lines; a line without a tab or with a label outside [0, num_classes) raises
    with its line number and the count of such lines."""
    out: list[tuple[str, int]] = []
    bad: list[int] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            sentence, sep, label = line.rstrip("\n").rpartition("\t")
            if not sep or not label.strip().isdigit() or int(label) >= num_classes or not sentence.strip():
                bad.append(lineno)
                continue
            out.append((sentence.strip(), int(label)))
    if bad:
        raise ValueError(f"{path}:{bad[0]}: expected `text<TAB>label` with a label below {num_classes} "
                         f"({len(bad)} bad line(s))")
    return out


def sample(items: list, limit: int | None, seed: int = 0) -> list:
    """`limit` items drawn with a fixed seed, in file order (all of them when limit is None)."""
    import random

    if limit is None or limit >= len(items):
        return list(items)
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), limit))]


def bio_names(types=CLUENER_TYPES) -> list[str]:
    return ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]


def encode_entities(tokenizer, examples: list[EntityExample], names: list[str], max_length: int) -> list[dict]:
    """Token ids with BIO label ids: B on the first token overlapping an entity, I on the rest;
    -100 on [CLS]/[SEP] (not predicted)."""
    index = {n: i for i, n in enumerate(names)}
    enc = tokenizer([e.text for e in examples], max_length=max_length, truncation=True, return_offsets_mapping=True)
    rows = []
    for ex, ids, offsets in zip(examples, enc["input_ids"], enc["offset_mapping"]):
        labels = [-100 if a == b else 0 for a, b in offsets]
        for start, end, etype in ex.entities:
            inside = [i for i, (a, b) in enumerate(offsets) if a < b and a < end and b > start]
            for k, i in enumerate(inside):
                labels[i] = index[f"{'B' if k == 0 else 'I'}-{etype}"]
        rows.append({"input_ids": ids, "labels": labels})
    return rows


def decode_entities(tags: list[int], offsets: list[tuple[int, int]], names: list[str]) -> set[tuple[int, int, str]]:
    """(start, end, type) character spans of B I* runs of one type (an I that does not continue a
    run of its type starts one, as seqeval's default mode reads it)."""
    spans: set[tuple[int, int, str]] = set()
    current = None  # [start, end, type]
    for tag, (a, b) in zip(tags, offsets):
        if a == b:
            continue
        prefix, _, etype = names[tag].partition("-")
        if prefix == "I" and current is not None and current[2] == etype:
            current[1] = b
            continue
        if current is not None:
            spans.add(tuple(current))
        current = [a, b, etype] if prefix in ("B", "I") else None
    if current is not None:
        spans.add(tuple(current))
    return spans


def entity_scores(gold: list[set], predicted: list[set]) -> dict:
    """Micro precision, recall and F1 over exact (start, end, type) matches."""
    correct = sum(len(g & p) for g, p in zip(gold, predicted))
    n_gold, n_pred = sum(map(len, gold)), sum(map(len, predicted))
    precision = correct / n_pred if n_pred else 0.0
    recall = correct / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
            "gold": n_gold, "predicted": n_pred, "correct": correct}


# -- fine-tuning ---------------------------------------------------------------------------------
def _tokenizer_for(checkpoint: Path):
    from wenzhi.model.tokenizer import load_tokenizer

    return load_tokenizer(checkpoint if (checkpoint / "vocab.txt").exists() else None)


def _fit(cfg: DownstreamConfig, model, rows: list[dict], collator) -> dict:
    """Trainer over `rows`; returns the loss at the start and the end of training."""
    import tempfile

    import torch
    from transformers import PrinterCallback, Trainer, TrainingArguments

    if cfg.freeze_universal:
        model.freeze_universal(True)
    with tempfile.TemporaryDirectory(prefix="wenzhi-downstream-") as scratch:
        args = TrainingArguments(
            output_dir=scratch, max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay, lr_scheduler_type="linear",
            warmup_steps=max(1, int(cfg.warmup_ratio * cfg.max_steps)), max_grad_norm=1.0,
            logging_steps=max(1, cfg.max_steps // 10), save_strategy="no", report_to="none",
            seed=cfg.seed, data_seed=cfg.seed, use_cpu=not torch.cuda.is_available(),
            disable_tqdm=True, dataloader_num_workers=0,
        )
        trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collator)
        trainer.remove_callback(PrinterCallback)  # the losses are in the report; no dict per log step
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    model.eval()
    return {"steps": cfg.max_steps, "first_loss": round(losses[0], 4) if losses else None,
            "last_loss": round(losses[-1], 4) if losses else None}


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _predict(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 128):
    """Per text: (argmax label ids per token, offsets) for a token head, the class id for a
    sequence head."""
    import torch

    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for chunk in _batches(texts, batch_size):
            enc = tokenizer(chunk, max_length=max_length, truncation=True, padding=True,
                            return_offsets_mapping=True, return_tensors="pt")
            logits = model(input_ids=enc["input_ids"].to(device), token_type_ids=enc["token_type_ids"].to(device),
                           attention_mask=enc["attention_mask"].to(device)).logits.argmax(-1).cpu()
            for i in range(len(chunk)):
                out.append((logits[i].tolist(), enc["offset_mapping"][i].tolist()) if logits.dim() == 2
                           else int(logits[i]))
    return out


def finetune_cluener(cfg: DownstreamConfig) -> dict:
    from transformers import DataCollatorForTokenClassification, set_seed

    from wenzhi.kg.datadir import data_path
    from wenzhi.model.modeling import WenzhiForTokenClassification

    checkpoint = Path(cfg.init)
    tokenizer = _tokenizer_for(checkpoint)
    train_path, eval_path = (data_path(p) for p in SPLITS["cluener"])
    train = sample(read_cluener(train_path), cfg.train_limit)
    evaluation = sample(read_cluener(eval_path), cfg.eval_limit)
    names = bio_names()
    set_seed(cfg.seed)  # the new classifier's initialisation
    model = WenzhiForTokenClassification.from_pretrained(
        checkpoint, num_labels=len(names), id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)})
    fit = _fit(cfg, model, encode_entities(tokenizer, train, names, cfg.max_length),
               DataCollatorForTokenClassification(tokenizer))
    predicted = [decode_entities(tags, offsets, names)
                 for tags, offsets in _predict(model, tokenizer, [e.text for e in evaluation], cfg.max_length)]
    scores = entity_scores([set(e.entities) for e in evaluation], predicted)
    return _report(cfg, model, tokenizer, fit, len(train), len(evaluation), {"entity_f1": scores["f1"], **scores})


def finetune_thucnews(cfg: DownstreamConfig) -> dict:
    from transformers import DataCollatorWithPadding, set_seed

    from wenzhi.kg.datadir import data_path
    from wenzhi.model.modeling import WenzhiForSequencePairClassification

    checkpoint = Path(cfg.init)
    tokenizer = _tokenizer_for(checkpoint)
    classes = read_classes(data_path("thucnews/class.txt"))
    train_path, eval_path = (data_path(p) for p in SPLITS["thucnews"])
    train = sample(read_thucnews(train_path, len(classes)), cfg.train_limit)
    evaluation = sample(read_thucnews(eval_path, len(classes)), cfg.eval_limit)
    set_seed(cfg.seed)
    model = WenzhiForSequencePairClassification.from_pretrained(
        checkpoint, num_labels=len(classes), pair_interaction="full", id2label=dict(enumerate(classes)),
        label2id={c: i for i, c in enumerate(classes)})
    enc = tokenizer([t for t, _ in train], max_length=cfg.max_length, truncation=True)
    rows = [{"input_ids": ids, "token_type_ids": types, "labels": label}
            for ids, types, (_, label) in zip(enc["input_ids"], enc["token_type_ids"], train)]
    fit = _fit(cfg, model, rows, DataCollatorWithPadding(tokenizer))
    predicted = _predict(model, tokenizer, [t for t, _ in evaluation], cfg.max_length)
    accuracy = sum(p == label for p, (_, label) in zip(predicted, evaluation)) / max(len(evaluation), 1)
    return _report(cfg, model, tokenizer, fit, len(train), len(evaluation), {"accuracy": round(accuracy, 4)})


def _report(cfg, model, tokenizer, fit: dict, n_train: int, n_eval: int, scores: dict) -> dict:
    report = {"task": cfg.task, **scores, "train_examples": n_train, "eval_examples": n_eval, **fit,
              "config": asdict(cfg)}
    if cfg.output_dir:  # written beside, then renamed: an interrupted run leaves the previous one
        import shutil

        target = Path(cfg.output_dir)
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if not (tmp / "vocab.txt").exists():  # load_tokenizer reads vocab.txt, which a fast tokenizer may not write
            shutil.copyfile(tokenizer.name_or_path, tmp / "vocab.txt")
        (tmp / "downstream.json").write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return report


def run(cfg: DownstreamConfig) -> dict:
    """Fine-tune and score; the report holds the task's metric, losses and CPU/wall seconds."""
    import torch

    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        report = (finetune_cluener if cfg.task == "cluener" else finetune_thucnews)(cfg)
    finally:
        torch.set_num_threads(threads)
    report["seconds"] = round(time.perf_counter() - wall, 1)
    report["cpu_seconds"] = round(time.process_time() - cpu, 1)
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, choices=TASKS,
                        help="cluener: entity F1 on CLUENER 2020 dev; thucnews: headline accuracy on THUCNews test")
    parser.add_argument("--checkpoint", required=True, help="a pretraining checkpoint (save_pretrained directory)")
    parser.add_argument("--output", help="save the fine-tuned model here (default: keep nothing)")
    defaults = DownstreamConfig(task="cluener", init="")
    parser.add_argument("--max-steps", type=int, default=defaults.max_steps,
                        help="optimizer steps (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help="examples per step (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=defaults.learning_rate,
                        help="peak learning rate (default: %(default)s)")
    parser.add_argument("--unfreeze", action="store_true", help="train the universal module too")
    parser.add_argument("--max-length", type=int, default=defaults.max_length,
                        help="tokens per example, longer ones cut (default: %(default)s)")
    parser.add_argument("--train-limit", type=int, help="a fixed-seed sample of N training examples (default: all)")
    parser.add_argument("--eval-limit", type=int, help="a fixed-seed sample of N evaluation examples (default: all)")
    parser.add_argument("--seed", type=int, default=0,
                        help="initialisation, data order and dropout (default: %(default)s)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")


def main(args: argparse.Namespace) -> int:
    if not (Path(args.checkpoint) / "config.json").exists():
        print(f"error: {args.checkpoint} is not a saved model (no config.json)", file=sys.stderr)
        return 2
    cfg = DownstreamConfig(task=args.task, init=args.checkpoint, max_steps=args.max_steps, batch_size=args.batch_size,
                           learning_rate=args.lr, freeze_universal=not args.unfreeze, max_length=args.max_length,
                           seed=args.seed, train_limit=args.train_limit, eval_limit=args.eval_limit,
                           threads=args.threads, output_dir=args.output)
    try:
        report = run(cfg)
    except ValueError as exc:  # bad data lines, with their line numbers
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, ensure_ascii=False))
    return 0
