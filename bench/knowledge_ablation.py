"""Does knowledge masking beat plain masked language modelling? An equal-compute ablation (issue 15).

    WENZHI_DATA=../shared/data nice -n 5 .venv/bin/python bench/knowledge_ablation.py --size cpu --seeds 3 --jobs 2
    WENZHI_DATA=../shared/data .venv/bin/python bench/knowledge_ablation.py --quick      # CI: tiny, one seed

The same model is pretrained on the same corpus slice for the same number of steps, once per
variant, where the variants differ only in how the text is masked (`wenzhi pretrain prepare`'s
strategies; everything else in the prepare and training configs is the same):

    A  characters only (BERT)                     char
    B  + whole words (jieba)                      char, word
    C  + phrases and entities (ERNIE 1.0)         char, word, phrase, entity
    D  + UKTP (ERNIE 3.0 triple-sentence pairs)   C + uktp; the triple corpora also as pairs
    E  + retrieval-augmented masking (OBERT)      D + retrieval (a knowledge segment of the KB)

Equal compute: every run takes `steps` optimizer steps of `batch_size` packed rows of `seq_len`
token slots, so all runs process the same token slots and (up to the MLM head's masked-token share)
the same FLOPs; each variant's shards hold more rows than that, so no run repeats data. UKTP and
retrieval augmentation put triple and knowledge tokens into those slots, where A-C have corpus text:
that is the method's price at equal compute, and tokens per kind are reported. Non-padding tokens
differ only by each variant's packing (rows never mix example kinds); the figures show by how much.

Held out from every variant (the probe's held-out facts must not be memorised): every sentence of
a held-out triple (`model.uktp.heldout_triple`) is removed from the AgriKG and KdConv text before
prepare (prepare alone drops held-out pairs, not a sibling pair's or a plain-text copy of the same
sentence), and the held-out MLM text is a People's Daily and review slice no run trains on, masked
once (plain random characters, fixed seed) and shared by all variants.

Evaluation of every run, identical across variants, seeded by the run's seed: the KB cloze probe on
held-out facts (`model/probe.py`: acc@1, mean rank); relation selection after the same SIM
fine-tune (KgCLUE train -> dev, `qa_service.evaluate`: >= 30 candidates); CLUENER 2020 entity F1
and THUCNews headline accuracy (`model/downstream.py`); held-out MLM loss at checkpoints (the curve)
and at the end. Seeds vary initialisation, data order and fine-tuning; each variant's masking is
drawn once (prepare seed 13). A difference "exceeds the seed spread" when |mean_v - mean_ref| >
std_v + std_ref (the ±1 std bars do not overlap). Each run is a subprocess (`--jobs` at a time),
its CPU time measured by wait4; finished runs are kept in --work and skipped when run again. Prints
a table and, last, one JSON line; draws the PNG.
"""
from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
ROOT = Path(__file__).resolve().parents[1]

KNOWLEDGE = {"char": 1, "word": 2, "phrase": 1, "entity": 2}  # the project's weights (prepare_full.yaml)
VARIANTS = {
    "A": ("characters only (BERT)", {"char": 1}),
    "B": ("+ whole words", {"char": 1, "word": 2}),
    "C": ("+ phrases and entities (ERNIE 1.0)", KNOWLEDGE),
    "D": ("+ UKTP (ERNIE 3.0)", {**KNOWLEDGE, "uktp": 1}),
    "E": ("+ retrieval-augmented masking (OBERT)", {**KNOWLEDGE, "uktp": 1, "retrieval": 1}),
}
METRICS = ["probe_acc_at_1", "probe_mean_rank", "relation_selection_acc_at_1", "cluener_f1", "thucnews_acc",
           "heldout_mlm_loss"]
LOWER_IS_BETTER = {"probe_mean_rank", "heldout_mlm_loss"}


@dataclass
class Size:
    people_daily: int  # training paragraphs (the first ones); the held-out text follows them
    reviews: int  # training reviews from each of reviews_pos.txt and reviews_neg.txt
    agrikg_rows: int | None  # AgriKG distant-supervision rows (None: all)
    kdconv_dialogues: int | None  # per KdConv file
    heldout_people_daily: int
    heldout_reviews: int
    seq_len: int = 128
    batch_size: int = 32
    steps: int = 1500
    curve_points: int = 6  # held-out MLM loss at every steps/curve_points
    learning_rate: float = 2e-3
    model: dict = field(default_factory=lambda: dict(
        hidden_size=64, num_attention_heads=4, intermediate_size=256, num_universal_layers=2, num_nlu_layers=1,
        num_nlg_layers=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    mask_ratio: float = 0.15
    prepare_overrides: dict = field(default_factory=dict)  # e.g. {"curriculum": "default"} for an attempt
    sim_steps: int = 600  # about one epoch of KgCLUE train at batch 32
    sim_questions: int | None = None
    qa_ner_steps: int = 60  # the pipeline needs a mention head; it does not enter relation selection
    relation_questions: int | None = None  # KgCLUE dev questions (None: all 2,000)
    downstream_steps: int = 600
    downstream_train: int | None = None
    downstream_eval: int | None = None
    probe_items: int = 400
    probe_candidates: int = 20
    threads: int = 1


SIZES = {
    "quick": Size(people_daily=40, reviews=20, agrikg_rows=80, kdconv_dialogues=2, heldout_people_daily=20,
                  heldout_reviews=10, seq_len=64, batch_size=8, steps=12, curve_points=3,
                  model=dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, num_universal_layers=1,
                             num_nlu_layers=1, num_nlg_layers=1, hidden_dropout_prob=0.0,
                             attention_probs_dropout_prob=0.0),
                  sim_steps=6, sim_questions=200, qa_ner_steps=3, relation_questions=30, downstream_steps=6,
                  downstream_train=200, downstream_eval=60, probe_items=15, probe_candidates=10),
    # about 90 minutes with two runs at a time on 2 otherwise idle cores (bench/RESULTS.md)
    "cpu": Size(people_daily=17000, reviews=6000, agrikg_rows=None, kdconv_dialogues=None, heldout_people_daily=1500,
                heldout_reviews=500),
    # a GPU: the small config's encoder on all the text, ten times the steps
    "gpu": Size(people_daily=17000, reviews=15000, agrikg_rows=None, kdconv_dialogues=None,
                heldout_people_daily=1500, heldout_reviews=1500, batch_size=64, steps=15000, learning_rate=1e-3,
                model=dict(hidden_size=256, num_attention_heads=4, intermediate_size=1024, num_universal_layers=2,
                           num_nlu_layers=2, num_nlg_layers=1), threads=4),
}
PREPARE_SEED, HELDOUT_SEED = 13, 7


# -- data shared by all variants -------------------------------------------------------------------
def build_data(size: Size, work: Path, kb: Path | None) -> dict:
    """KB store, corpora without held-out facts, held-out MLM shards. Returns what each step needs."""
    from wenzhi.kg import TripleStore
    from wenzhi.kg.datadir import data_path
    from wenzhi.model.corpora import kdconv_pairs, read_agrikg
    from wenzhi.model.prepare import PrepareConfig, prepare
    from wenzhi.model.uktp import heldout_triple

    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    if kb is None:
        kb = work / "kb.sqlite"
        if not kb.exists():
            TripleStore.import_files([data_path("kb/knowledge.txt")], kb)
    fraction = 0.1
    pairs = list(read_agrikg(data_path("corpus/agrikg_distant_supervision.tsv"))) + list(kdconv_pairs(data_path("kdconv")))
    heldout = {p.sentence.strip() for p in pairs if heldout_triple(p.head, p.relation, p.tail, fraction)}
    removed = {"agrikg_rows": 0, "kdconv_turns": 0}
    agrikg = data / "agrikg.tsv"
    with open(data_path("corpus/agrikg_distant_supervision.tsv"), encoding="utf-8", newline="") as src, \
            open(agrikg, "w", encoding="utf-8", newline="") as dst:
        writer = csv.writer(dst, delimiter="\t")
        for i, row in enumerate(csv.reader(src, delimiter="\t")):
            if size.agrikg_rows is not None and i >= size.agrikg_rows:
                break
            if len(row) == 6 and row[4].strip() in heldout:
                removed["agrikg_rows"] += 1
            else:
                writer.writerow(row)
    for file in sorted(data_path("kdconv").rglob("*.json")):
        dialogues = json.loads(file.read_text(encoding="utf-8"))[: size.kdconv_dialogues]
        for dialogue in dialogues:
            kept = [m for m in dialogue.get("messages", []) if m.get("message", "").strip() not in heldout]
            removed["kdconv_turns"] += len(dialogue.get("messages", [])) - len(kept)
            dialogue["messages"] = kept
        out = data / "kdconv" / file.relative_to(data_path("kdconv"))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(dialogues, ensure_ascii=False), encoding="utf-8")
    heldout_shards = work / "heldout-shards"
    if not (heldout_shards / "meta.json").exists():
        pd, rv = size.people_daily, size.reviews
        prepare(PrepareConfig.from_dict({
            "output": str(heldout_shards), "seq_len": size.seq_len, "seed": HELDOUT_SEED, "mask_ratio": 0.15,
            "strategies": {"char": 1}, "corpora": [
                {"path": "corpus/people_daily_1998_pos.txt", "format": "people_daily", "skip": pd,
                 "limit": size.heldout_people_daily},
                {"path": "corpus/reviews_pos.txt", "format": "text", "skip": rv, "limit": size.heldout_reviews},
                {"path": "corpus/reviews_neg.txt", "format": "text", "skip": rv, "limit": size.heldout_reviews}]}),
            show_progress=False)
    return {"kb": str(kb), "corpora": str(data), "heldout_shards": str(heldout_shards),
            "heldout_sentences": len(heldout), "removed": removed}


def prepare_config(size: Size, variant: str, shared: dict, output: Path) -> dict:
    """The variant's prepare config: the same corpora and settings, its own masking strategies.
    D and E also read the triple corpora as triple-sentence pairs (what UKTP trains on)."""
    strategies = VARIANTS[variant][1]
    knowledge = bool({"uktp", "retrieval"} & set(strategies))
    corpora = Path(shared["corpora"])
    return {
        "output": str(output), "seq_len": size.seq_len, "seed": PREPARE_SEED, "mask_ratio": size.mask_ratio,
        "heldout_fraction": 0.1, "kb": shared["kb"] if {"entity", "uktp", "retrieval"} & set(strategies) else None,
        "corpora": [
            {"path": "corpus/people_daily_1998_pos.txt", "format": "people_daily", "limit": size.people_daily},
            {"path": "corpus/reviews_pos.txt", "format": "text", "limit": size.reviews},
            {"path": "corpus/reviews_neg.txt", "format": "text", "limit": size.reviews},
            {"path": str(corpora / "agrikg.tsv"), "format": "agrikg", "use": "triples" if knowledge else "text"},
            {"path": str(corpora / "kdconv"), "format": "kdconv", "use": "both" if knowledge else "text"}],
        "strategies": strategies, "curriculum": None, "augment": {"max_tokens": 64, "min_tokens": 8},
        **size.prepare_overrides,
    }


def train_config(size: Size, shards: Path, out: Path, seed: int) -> dict:
    every = max(1, size.steps // size.curve_points)
    order = "sequential" if size.prepare_overrides.get("curriculum") else "shuffle"
    return {"output_dir": str(out), "phases": [{"shards": str(shards), "steps": size.steps,
                                                "batch_size": size.batch_size, "order": order}],
            "model": dict(size.model), "optimizer": "adamw", "learning_rate": size.learning_rate,
            "warmup_ratio": 0.06, "lr_scheduler": "linear", "lm_weight": 0.0, "seed": seed,
            "checkpoint_every": every, "keep_checkpoints": size.curve_points + 1, "log_every": max(1, size.steps // 20),
            "num_threads": size.threads, "report_to": "none"}


# -- one variant's shards, one run -----------------------------------------------------------------
def prepare_variant(size: Size, variant: str, shared: dict, work: Path) -> dict:
    from wenzhi.model.prepare import PrepareConfig, prepare

    out = work / "shards" / variant
    if not (out / "meta.json").exists():
        prepare(PrepareConfig.from_dict(prepare_config(size, variant, shared, out)), show_progress=False)
    meta = json.loads((out / "meta.json").read_text())
    stats = meta["stats"]["prepare"]
    return {"rows": meta["num_sequences"], "tokens": stats["tokens"], "masked_tokens": stats["masked_tokens"],
            "tokens_per_kind": stats["tokens_per_kind"], "examples_per_strategy": stats["examples_per_strategy"],
            "padding_fraction": meta["stats"]["padding_fraction"], "augmentation": stats.get("augmentation")}


def consumed(size: Size, shards: Path, seed: int) -> dict:
    """What the trainer reads in `steps` steps (its own PhaseData): token slots, real tokens per
    kind, masked tokens, training FLOPs, and the tokens seen after each step (the curve's x)."""
    import numpy as np

    from wenzhi.model.flops import training_step_flops
    from wenzhi.model.modeling import WenzhiConfig
    from wenzhi.model.trainer import Phase, PhaseData

    config = WenzhiConfig(**size.model)
    data = PhaseData(Phase(str(shards), size.steps, size.batch_size, order=train_config(size, shards, shards, seed)
                           ["phases"][0]["order"]), 0, seed, 0, 1)
    if data.n < size.steps * size.batch_size:
        raise ValueError(f"{shards}: {data.n} rows, fewer than the {size.steps * size.batch_size} a run reads "
                         "(equal compute without repeats needs more text: raise the corpus limits)")
    tokens, masked, flops, per_kind, cumulative = 0, 0, 0.0, {}, []
    for step in range(size.steps):
        batch = data.batch(step)
        real = batch["document_ids"] >= 0
        n_masked = int((batch["labels"] != -100).sum())
        tokens += int(real.sum())
        masked += n_masked
        flops += training_step_flops(config, real.size, size.seq_len, n_masked)
        for kind in np.unique(batch["kind"]):
            per_kind[int(kind)] = per_kind.get(int(kind), 0) + int(real[batch["kind"] == kind].sum())
        cumulative.append(tokens)
    return {"steps": size.steps, "token_slots": size.steps * size.batch_size * size.seq_len, "tokens": tokens,
            "masked_tokens": masked, "flops": flops, "tokens_per_kind": {str(k): v for k, v in sorted(per_kind.items())},
            "tokens_after_step": cumulative}


def heldout_mlm_loss(model, shards: Path, batch_size: int = 64) -> float:
    """Mean MLM loss over every masked token of the held-out shards (the same masks for all)."""
    import numpy as np
    import torch

    from wenzhi.model.shards import ShardReader, batch_to_tensors

    reader = ShardReader(shards)
    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(reader), batch_size):
            b = batch_to_tensors(reader.batch(np.arange(start, min(start + batch_size, len(reader)))))
            out = model(input_ids=b["input_ids"], labels=b["labels"], token_type_ids=b["token_type_ids"],
                        document_ids=b["document_ids"])
            n = int((b["labels"] != -100).sum())
            total += float(out.mlm_loss) * n
            count += n
    return total / max(count, 1)


def loss_curve(pretrain_dir: Path, shards: Path, tokens_after_step: list[int]) -> list[dict]:
    """Held-out MLM loss of every kept checkpoint (verified, weights read from safetensors) and of
    the final model, against the tokens seen by then."""
    from safetensors.torch import load_file

    from wenzhi.model.checkpoint import complete_checkpoints, verify_checkpoint
    from wenzhi.model.modeling import WenzhiForPretraining

    model = WenzhiForPretraining.from_pretrained(pretrain_dir / "model")
    final = {"step": len(tokens_after_step), "tokens": tokens_after_step[-1], "loss": heldout_mlm_loss(model, shards)}
    points = [final]
    for ckpt in complete_checkpoints(pretrain_dir / "checkpoints"):
        step = verify_checkpoint(ckpt)["step"]
        model.load_state_dict(load_file(str(ckpt / "model.safetensors")))
        points.append({"step": step, "tokens": tokens_after_step[step - 1], "loss": heldout_mlm_loss(model, shards)})
    return sorted(points, key=lambda p: p["step"])


@functools.lru_cache(maxsize=2)
def probe_items(candidates: int, limit: int) -> list:
    """The held-out probe items with their candidates, the same for every run (probe.py's own
    choice: distractors from answers of the same relation, a fixed seed)."""
    from wenzhi.model import probe

    items = probe.add_candidates(probe.load_items(["agrikg", "kdconv"], 0.1, limit), candidates, seed=0)
    return probe.select(items, "heldout", limit, seed=0)


def run_one(size: Size, variant: str, seed: int, shared: dict, work: Path) -> dict:
    """Pretrain one variant with one seed, then every evaluation; CPU and wall seconds per stage."""
    import torch

    from wenzhi.kg.datadir import data_path
    from wenzhi.model import downstream, probe
    from wenzhi.model.tokenizer import load_tokenizer
    from wenzhi.model.trainer import TrainConfig, train
    from wenzhi.qa_service.evaluate import evaluate
    from wenzhi.qa_service.finetune import FinetuneConfig, finetune

    import transformers

    transformers.logging.set_verbosity_error()  # every head load would list its new classifier weights
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(size.threads)
    run_dir = work / "runs" / variant / f"seed-{seed}"
    shards = work / "shards" / variant
    result: dict = {"variant": variant, "seed": seed, "cpu_seconds": {}, "seconds": {}}

    def stage(name, fn):
        wall, cpu = time.perf_counter(), time.process_time()
        value = fn()
        result["seconds"][name] = round(time.perf_counter() - wall, 1)
        result["cpu_seconds"][name] = round(time.process_time() - cpu, 1)
        return value

    result["compute"] = stage("accounting", lambda: consumed(size, shards, seed))
    cfg = TrainConfig.from_dict(train_config(size, shards, run_dir / "pretrain", seed), work)
    summary = stage("pretrain", lambda: train(cfg, resume=True, show_progress=False))
    result["pretrain"] = {k: summary[k] for k in ("steps", "tokens_total", "first_loss_this_run", "last_loss")}
    model_dir = Path(summary["model_dir"])
    result["curve"] = stage("heldout_mlm", lambda: loss_curve(run_dir / "pretrain", Path(shared["heldout_shards"]),
                                                              result["compute"]["tokens_after_step"]))
    del result["compute"]["tokens_after_step"]

    def run_probe():
        items = probe_items(size.probe_candidates, size.probe_items)
        tokenizer = load_tokenizer(model_dir)  # the checkpoint's vocab.txt
        return probe.evaluate(probe.load_model(str(model_dir)), tokenizer, items)["heldout"]

    result["probe"] = stage("probe", run_probe)
    qa, kb = run_dir / "qa", Path(shared["kb"])
    kgclue = data_path("kgclue/train.json")

    def relation_selection():
        finetune(FinetuneConfig(task="sim", out=qa, kb=kb, questions=[kgclue], init=model_dir, max_steps=size.sim_steps,
                                limit=size.sim_questions, seed=seed, threads=size.threads))
        finetune(FinetuneConfig(task="ner", out=qa, kb=kb, questions=[kgclue], init=qa / "sim",
                                max_steps=size.qa_ner_steps, limit=size.sim_questions, seed=seed, threads=size.threads))
        scores = evaluate(data_path("kgclue/dev.json"), kb, qa, limit=size.relation_questions, use_gen=False,
                          threads=size.threads, progress=False)
        return {**scores["relation_selection"], "kgclue_score": scores["score"], "questions": scores["n"]}

    result["relation_selection"] = stage("sim", relation_selection)
    for task in downstream.TASKS:
        dcfg = downstream.DownstreamConfig(task=task, init=str(model_dir), max_steps=size.downstream_steps, seed=seed,
                                           train_limit=size.downstream_train, eval_limit=size.downstream_eval,
                                           threads=size.threads)
        report = stage(task, lambda: downstream.run(dcfg))
        result[task] = {k: v for k, v in report.items() if k != "config"}
    result["metrics"] = {
        "probe_acc_at_1": result["probe"]["acc@1"], "probe_mean_rank": result["probe"]["mean_rank"],
        "relation_selection_acc_at_1": result["relation_selection"]["accuracy_at_1"],
        "cluener_f1": result["cluener"]["entity_f1"], "thucnews_acc": result["thucnews"]["accuracy"],
        "heldout_mlm_loss": round(result["curve"][-1]["loss"], 4)}
    return result


# -- orchestration ---------------------------------------------------------------------------------
def _write_json(path: Path, value) -> None:
    """Written beside and renamed: a killed run never leaves half a result."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def run_tasks(tasks: list[tuple[str, Path, list[str]]], jobs: int) -> dict[str, dict]:
    """Run (name, result file, argv) subprocesses, `jobs` at a time; a task whose result file
    exists is kept. Returns name -> {"cpu_seconds", "seconds"} from wait4 (the child's own CPU)."""
    pending = [t for t in tasks if not t[1].exists()]
    for name, out, _ in tasks:
        if out.exists():
            print(f"  {name}: kept from an earlier run ({out})", flush=True)
    running: dict[int, tuple] = {}
    usage: dict[str, dict] = {}
    done, failed = len(tasks) - len(pending), []
    while pending or running:
        while pending and len(running) < jobs:
            name, out, argv = pending.pop(0)
            out.parent.mkdir(parents=True, exist_ok=True)
            log = open(out.with_suffix(".log"), "w")
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
            running[proc.pid] = (name, out, proc, log, time.perf_counter())
        pid, status, rusage = os.wait4(-1, 0)
        if pid not in running:
            continue
        name, out, proc, log, started = running.pop(pid)
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.close()
        done += 1
        usage[name] = {"cpu_seconds": round(rusage.ru_utime + rusage.ru_stime, 1),
                       "seconds": round(time.perf_counter() - started, 1)}
        state = "done" if proc.returncode == 0 and out.exists() else f"FAILED (exit {proc.returncode}, see {out.with_suffix('.log')})"
        if state != "done":
            failed.append(name)
        print(f"  [{done}/{len(tasks)}] {name}: {state} in {usage[name]['seconds']:.0f} s wall, "
              f"{usage[name]['cpu_seconds']:.0f} s CPU", flush=True)
    if failed:
        raise SystemExit(f"error: {len(failed)} task(s) failed: {', '.join(failed)}")
    return usage


def mean_std(values: list[float]) -> dict:
    return {"mean": round(statistics.fmean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0}


def aggregate(results: list[dict], variants: list[str]) -> dict:
    table: dict = {}
    for v in variants:
        runs = [r for r in results if r["variant"] == v]
        entry = {m: mean_std([r["metrics"][m] for r in runs]) for m in METRICS}
        entry.update({
            "tokens": round(statistics.fmean(r["compute"]["tokens"] for r in runs)),
            "token_slots": runs[0]["compute"]["token_slots"], "steps": runs[0]["compute"]["steps"],
            "flops": float(f"{statistics.fmean(r['compute']['flops'] for r in runs):.4g}"),
            "tokens_per_kind": runs[0]["compute"]["tokens_per_kind"],
            "seconds": round(statistics.fmean(r["seconds"]["pretrain"] for r in runs), 1),
            "cpu_seconds": round(statistics.fmean(r["cpu_seconds"]["pretrain"] for r in runs), 1),
            "run_cpu_seconds": round(statistics.fmean(r.get("run_cpu_seconds", sum(r["cpu_seconds"].values()))
                                                      for r in runs), 1),
            "seeds": [r["seed"] for r in runs]})
        table[v] = entry
    diffs: dict = {}
    for i, v in enumerate(variants[1:], 1):
        for ref in dict.fromkeys([variants[0], variants[i - 1]]):
            for m in METRICS:
                a, b = table[v][m], table[ref][m]
                delta = a["mean"] - b["mean"]
                better = delta < 0 if m in LOWER_IS_BETTER else delta > 0
                diffs.setdefault(f"{v}-{ref}", {})[m] = {
                    "delta": round(delta, 4), "exceeds_seed_spread": abs(delta) > a["std"] + b["std"],
                    "better": better}
    return {"variants": table, "differences": diffs}


def print_tables(summary: dict) -> None:
    table = summary["variants"]
    print("\n| variant | " + " | ".join(METRICS) + " | tokens seen | FLOPs | pretrain CPU s |")
    print("|---" * (len(METRICS) + 4) + "|")
    for v, e in table.items():
        cells = [f"{e[m]['mean']:.4f} ± {e[m]['std']:.4f}" for m in METRICS]
        print(f"| {v} {VARIANTS[v][0]} | " + " | ".join(cells) + f" | {e['tokens']:,} | {e['flops']:.3g} | {e['cpu_seconds']:.0f} |")
    print("\n| difference | " + " | ".join(METRICS) + " |")
    print("|---" * (len(METRICS) + 1) + "|")
    for name, d in summary["differences"].items():
        cells = [f"{d[m]['delta']:+.4f}{' *' if d[m]['exceeds_seed_spread'] else ''}" for m in METRICS]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("(* the difference exceeds the seed spread: |Δ| > std + std)")


def plot(summary: dict, results: list[dict], path: Path) -> None:
    """Held-out MLM loss against tokens seen (mean ± std over seeds), each metric per variant with
    its seed spread as error bars, and the token mix the equal compute bought."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    variants = list(summary["variants"])
    colors = dict(zip(variants, plt.cm.tab10.colors))
    fig, axes = plt.subplots(2, 4, figsize=(19, 8.5))
    ax = axes[0][0]
    for v in variants:
        curves = [r["curve"] for r in results if r["variant"] == v]
        x = np.mean([[p["tokens"] for p in c] for c in curves], axis=0)
        y = np.array([[p["loss"] for p in c] for c in curves])
        ax.plot(x, y.mean(0), marker="o", ms=3, color=colors[v], label=f"{v} {VARIANTS[v][0]}")
        ax.fill_between(x, y.mean(0) - y.std(0), y.mean(0) + y.std(0), color=colors[v], alpha=0.2)
    ax.set(xlabel="tokens seen", ylabel="held-out MLM loss (char masking)", title="held-out MLM loss")
    ax.legend(fontsize=7)
    for ax, m in zip(axes.flat[1:], METRICS):
        means = [summary["variants"][v][m]["mean"] for v in variants]
        stds = [summary["variants"][v][m]["std"] for v in variants]
        ax.bar(variants, means, yerr=stds, capsize=4, color=[colors[v] for v in variants])
        lo, hi = min(a - b for a, b in zip(means, stds)), max(a + b for a, b in zip(means, stds))
        ax.set_ylim(lo - 0.15 * (hi - lo + 1e-9), hi + 0.15 * (hi - lo + 1e-9))
        ax.set_title(m + (" (lower is better)" if m in LOWER_IS_BETTER else ""))
    ax = axes.flat[len(METRICS) + 1]
    bottom = np.zeros(len(variants))
    for kind, name in enumerate(["text", "knowledge-masked", "UKTP", "retrieval-augmented"]):
        counts = np.array([summary["variants"][v]["tokens_per_kind"].get(str(kind), 0) for v in variants], float)
        ax.bar(variants, counts, bottom=bottom, label=name)
        bottom += counts
    ax.axhline(summary["variants"][variants[0]]["token_slots"], color="k", ls="--", lw=1, label="token slots (equal)")
    ax.set_title("tokens seen per example kind")
    ax.legend(fontsize=7, loc="lower right")
    seeds = len(summary["variants"][variants[0]]["seeds"])
    fig.suptitle(f"Knowledge masking ablation at equal compute ({seeds} seed(s); error bars ±1 std)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _parse_sets(items: list[str]) -> dict:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"error: expected KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu")
    parser.add_argument("--quick", action="store_true", help="CI check: --size quick --seeds 1 --jobs 0")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--variants", default="ABCDE")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (0: in this process, one by one)")
    parser.add_argument("--work", help="work folder (default runs/knowledge-ablation-SIZE); finished runs are kept")
    parser.add_argument("--kb", help="an existing TripleStore (default: import kb/knowledge.txt into --work)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a size field (YAML value), e.g. steps=3000 or prepare_overrides={mask_ratio: 0.2}")
    parser.add_argument("--plot", help="PNG path (default bench/knowledge_ablation_SIZE.png; quick: in --work)")
    parser.add_argument("--json", help="also write the summary here")
    parser.add_argument("--worker", choices=["prepare", "run"], help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.size, args.seeds, args.jobs = "quick", 1, 0
    work = Path(args.work or ROOT / "runs" / f"knowledge-ablation-{args.size}").resolve()
    if args.worker:  # a subprocess of the command below: one prepare or one run
        size = Size(**json.loads((work / "ablation.json").read_text())["size"])
        shared = json.loads((work / "shared.json").read_text())
        if args.worker == "prepare":
            _write_json(work / "shards" / f"{args.variant}.json", prepare_variant(size, args.variant, shared, work))
        else:
            result = run_one(size, args.variant, args.seed, shared, work)
            _write_json(work / "runs" / args.variant / f"seed-{args.seed}" / "result.json", result)
        return 0

    size = replace(SIZES[args.size], **_parse_sets(args.set))
    variants = [v for v in args.variants.upper() if v in VARIANTS]
    seeds = list(range(args.seeds))
    work.mkdir(parents=True, exist_ok=True)
    record = {"size_name": args.size, "size": asdict(size)}
    if (work / "ablation.json").exists() and json.loads((work / "ablation.json").read_text()) != record:
        print(f"error: {work} holds runs of another configuration; choose another --work", file=sys.stderr)
        return 2
    _write_json(work / "ablation.json", record)
    started, cpu0 = time.perf_counter(), time.process_time()
    print(f"knowledge ablation: size {args.size}, variants {''.join(variants)}, seeds {seeds}, "
          f"{size.steps} steps x {size.batch_size} rows x {size.seq_len} tokens per run; work {work}", flush=True)
    shared = build_data(size, work, Path(args.kb).resolve() if args.kb else None)
    _write_json(work / "shared.json", shared)
    print(f"data: {shared['heldout_sentences']} held-out sentences; removed {shared['removed']}", flush=True)
    me = [sys.executable, str(Path(__file__).resolve()), "--work", str(work), "--size", args.size]
    prep_tasks = [(f"prepare {v}", work / "shards" / f"{v}.json", me + ["--worker", "prepare", "--variant", v])
                  for v in variants]
    run_tasks_ = [(f"run {v} seed {s}", work / "runs" / v / f"seed-{s}" / "result.json",
                   me + ["--worker", "run", "--variant", v, "--seed", str(s)]) for s in seeds for v in variants]
    usage: dict = {}
    if args.jobs > 0:
        usage.update(run_tasks(prep_tasks, args.jobs))
        usage.update(run_tasks(run_tasks_, args.jobs))
    else:  # in this process (quick mode): no interpreter start-up per task
        for name, out, argv in prep_tasks:
            v = argv[argv.index("--variant") + 1]
            if not out.exists():
                _write_json(out, prepare_variant(size, v, shared, work))
        for name, out, argv in run_tasks_:
            v, s = argv[argv.index("--variant") + 1], int(argv[argv.index("--seed") + 1])
            if not out.exists():
                out.parent.mkdir(parents=True, exist_ok=True)
                _write_json(out, run_one(size, v, s, shared, work))
            print(f"  {name}: done", flush=True)
    results = []
    for name, out, _ in run_tasks_:
        r = json.loads(out.read_text())
        if name in usage:
            r["run_cpu_seconds"] = usage[name]["cpu_seconds"]
        results.append(r)
    summary = aggregate(results, variants)
    for v in variants:
        summary["variants"][v]["prepare"] = json.loads((work / "shards" / f"{v}.json").read_text())
        if f"prepare {v}" in usage:
            summary["variants"][v]["prepare"]["cpu_seconds"] = usage[f"prepare {v}"]["cpu_seconds"]
    summary.update({"size": args.size, "seeds": seeds, "work": str(work), "data": shared,
                    "machine": f"{platform.node()} {os.cpu_count()} cores",
                    "wall_seconds": round(time.perf_counter() - started, 1),
                    "cpu_seconds": round(time.process_time() - cpu0 + sum(u["cpu_seconds"] for u in usage.values()), 1)})
    print_tables(summary)
    plot_path = Path(args.plot) if args.plot else (work / "knowledge_ablation.png" if args.size == "quick"
                                                   else ROOT / "bench" / f"knowledge_ablation_{args.size}.png")
    plot(summary, results, plot_path)
    summary["plot"] = str(plot_path)
    if args.json:
        _write_json(Path(args.json), summary)
    print(f"total: {summary['wall_seconds']:.0f} s wall, {summary['cpu_seconds']:.0f} s CPU; plot {plot_path}")
    print(json.dumps(summary, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
