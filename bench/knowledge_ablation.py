"""Does knowledge masking beat plain masked language modelling? An equal-compute ablation (issue 15).

    WENZHI_DATA=../shared/data nice -n 19 .venv/bin/python bench/knowledge_ablation.py --size cpu --seeds 3 --jobs 2
    WENZHI_DATA=../shared/data .venv/bin/python bench/knowledge_ablation.py --quick      # CI: tiny, one seed
    ... --variants A,FA,FE   # any subset; finished pieces in --work are reused

The same model is pretrained on the same corpus slice for the same number of steps, once per
variant, where the variants differ only in how the text is masked (`wenzhi pretrain prepare`'s
strategies; everything else in the prepare and training configs is the same):

    A  characters only (BERT)                     char
    B  + whole words (jieba)                      char, word
    C  + phrases and entities (ERNIE 1.0)         char, word, phrase, entity
    D  + UKTP (ERNIE 3.0 triple-sentence pairs)   C + uktp; the triple corpora also as pairs
    E  + retrieval-augmented masking (OBERT)      D + retrieval (a knowledge segment of the KB)
    R  no pretraining: the same model as it starts (what fine-tuning alone reaches)
    F0 an imported BERT-style checkpoint, not continued (knowledge_ablation_bert.py: no hub
       weights here, so a BertForMaskedLM of the same shape is trained on A's text first)
    FA..FE  A..E's shards, continued from that checkpoint through --init's import, equal steps
    EC  remedy, a curriculum: A's shards for the first half of the steps, E's for the second
    EL  remedy, E at a lower knowledge share (plain characters weighted up: MASKING["EL"])
    ES  remedy, E with a knowledge segment half as long (AUGMENT["ES"]: 32 tokens, not 64)

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
fine-tune (KgCLUE train -> dev, `qa_service.evaluate`: >= 30 candidates; issue 12's relation-matching
head, with the no-learning lexical rule's accuracy on the same candidates beside it); CLUENER 2020 entity F1
and THUCNews headline accuracy (`model/downstream.py`); held-out MLM loss at checkpoints (the curve)
and at the end. Seeds vary initialisation, data order and fine-tuning; each variant's masking is
drawn once (prepare seed 13). A difference "exceeds the seed spread" when |mean_v - mean_ref| >
std_v + std_ref (the ±1 std bars do not overlap). Each run is a subprocess (`--jobs` at a time),
its CPU time measured by wait4. Every piece (filtered corpora, shards, runs) lives in --work in a
folder named by a hash of what made it, so a later command reuses whatever it asks for again (an
attempt that changes one variant's masking retrains only that variant) and never a stale piece;
each evaluation is kept apart under a hash of its own settings (`Plan.evaluation`), so a changed
evaluation re-runs that evaluation alone, neither the pretraining nor the other evaluations.
Prints a table and, last, one JSON line; draws the PNG.
"""
from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
ROOT = Path(__file__).resolve().parents[1]

from knowledge_ablation_plan import (  # noqa: E402  (bench/ is on sys.path)
    HELDOUT_FRACTION, NAMES, SIZES, VARIANTS, Plan, Size, adopt_evaluations, comparisons, key, parse_variants)
from knowledge_ablation_plan import write_json as _write_json  # noqa: E402
from knowledge_ablation_report import aggregate, plot, print_tables  # noqa: E402

# -- data shared by all variants -------------------------------------------------------------------
def build_data(plan: Plan) -> dict:
    """Corpora without held-out facts and the held-out MLM shards (each built once)."""
    from wenzhi.kg.datadir import data_path
    from wenzhi.model.corpora import kdconv_pairs, read_agrikg
    from wenzhi.model.prepare import PrepareConfig, prepare
    from wenzhi.model.uktp import heldout_triple

    size, data = plan.size, plan.data
    pairs = list(read_agrikg(data_path("corpus/agrikg_distant_supervision.tsv"))) + list(kdconv_pairs(data_path("kdconv")))
    heldout = {p.sentence.strip() for p in pairs if heldout_triple(p.head, p.relation, p.tail, HELDOUT_FRACTION)}
    removed = {"agrikg_rows": 0, "kdconv_turns": 0}
    tmp = data.with_name(data.name + ".tmp")
    if not data.exists():
        tmp.mkdir(parents=True, exist_ok=True)
        with open(data_path("corpus/agrikg_distant_supervision.tsv"), encoding="utf-8", newline="") as src, \
                open(tmp / "agrikg.tsv", "w", encoding="utf-8", newline="") as dst:
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
            out = tmp / "kdconv" / file.relative_to(data_path("kdconv"))
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(dialogues, ensure_ascii=False), encoding="utf-8")
        _write_json(tmp / "removed.json", removed)
        os.replace(tmp, data)
    if not (plan.heldout / "meta.json").exists():
        prepare(PrepareConfig.from_dict({"output": str(plan.heldout), **plan.heldout_config()}), show_progress=False)
    return {"heldout_sentences": len(heldout), "removed": json.loads((data / "removed.json").read_text())}


# -- one variant's shards, one run -----------------------------------------------------------------
def prepare_variant(plan: Plan, masking: str, copy: int = 0) -> dict:
    from wenzhi.model.prepare import PrepareConfig, prepare

    out = plan.shards(masking, copy=copy)
    if not (out / "meta.json").exists():
        prepare(PrepareConfig.from_dict({"output": str(out), **plan.prepare_config(masking, copy)}), show_progress=False)
    meta = json.loads((out / "meta.json").read_text())
    stats = meta["stats"]["prepare"]
    return {"shards": out.name, "rows": meta["num_sequences"], "tokens": stats["tokens"],
            "masked_tokens": stats["masked_tokens"], "tokens_per_kind": stats["tokens_per_kind"],
            "examples_per_strategy": stats["examples_per_strategy"],
            "padding_fraction": meta["stats"]["padding_fraction"], "augmentation": stats.get("augmentation")}


def consumed(plan: Plan, variant: str, seed: int) -> dict:
    """What the trainer reads in `steps` steps (its own PhaseData): token slots, real tokens per
    kind, masked tokens, training FLOPs, and the tokens seen after each step (the curve's x)."""
    import numpy as np

    from wenzhi.model.flops import training_step_flops
    from wenzhi.model.modeling import WenzhiConfig
    from wenzhi.model.trainer import Phase, PhaseData

    size = plan.size
    config = WenzhiConfig(**size.model)
    batches = []  # (phase data, step within the phase) of every step, as the trainer takes them
    for index, phase in enumerate(plan.train_config(variant, seed)["phases"]):
        data = PhaseData(Phase(**phase), index, seed, 0, 1)
        if data.n * size.max_epochs < phase["steps"] * size.batch_size:
            raise ValueError(f"{phase['shards']}: {data.n} rows, fewer than the {phase['steps'] * size.batch_size} a run "
                             f"reads at most {size.max_epochs:g} times each (raise the corpus limits, mask_copies "
                             "or max_epochs)")
        batches += [(data, step) for step in range(phase["steps"])]
    tokens, masked, flops, per_kind, cumulative = 0, 0, 0.0, {}, []
    for data, step in batches:
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


def pretrain(cfg) -> dict:
    """Train, or take the finished model of an earlier command (its train_log's summary)."""
    from wenzhi.model.trainer import train

    log = Path(cfg.output_dir) / "train_log.jsonl"
    if (Path(cfg.output_dir) / "model" / "config.json").exists() and log.exists():
        done = json.loads(log.read_text(encoding="utf-8").splitlines()[-1])
        if done.get("event") == "done" and done.get("steps") == cfg.total_steps:
            return {**done, "reused": True}
    return train(cfg, resume=True, show_progress=False)


def random_model(plan: Plan, out: Path, seed: int) -> Path:
    """The pretraining model as the trainer builds it before step 1 (same seed, same init), saved
    with the vocabulary every variant's shards use."""
    import shutil

    from accelerate.utils import set_seed

    from wenzhi.model.modeling import WenzhiConfig, WenzhiForPretraining
    from wenzhi.model.tokenizer import load_tokenizer

    if (out / "config.json").exists():  # made by an earlier command: the same seed gives the same init
        return out
    tokenizer = load_tokenizer()
    set_seed(seed)
    model = WenzhiForPretraining(WenzhiConfig(vocab_size=len(tokenizer), **plan.size.model))
    model.save_pretrained(out)
    shutil.copyfile(tokenizer.name_or_path, out / "vocab.txt")
    return out


def run_one(plan: Plan, variant: str, seed: int) -> dict:
    """Pretrain one variant with one seed, then every evaluation; CPU and wall seconds per stage."""
    import torch

    from wenzhi.model import downstream, probe
    from wenzhi.model.modeling import WenzhiForPretraining
    from wenzhi.model.tokenizer import load_tokenizer
    from wenzhi.model.trainer import TrainConfig

    import transformers

    transformers.logging.set_verbosity_error()  # every head load would list its new classifier weights
    transformers.utils.logging.disable_progress_bar()
    size = plan.size
    torch.set_num_threads(size.threads)
    run_dir = plan.run_dir(variant, seed)
    result: dict = {"variant": variant, "seed": seed, "cpu_seconds": {}, "seconds": {}, "reused": []}

    def stage(name, fn):
        wall, cpu = time.perf_counter(), time.process_time()
        value = fn()
        result["seconds"][name] = round(time.perf_counter() - wall, 1)
        result["cpu_seconds"][name] = round(time.process_time() - cpu, 1)
        return value

    def evaluation(name, fn):
        """An evaluation stage, kept in its own file keyed by its own settings (Plan.evaluation):
        taken from there when an earlier command made it; its recorded cost is what it cost then."""
        path = plan.evaluation(variant, seed, name)
        if path.exists():
            record = json.loads(path.read_text(encoding="utf-8"))
            result["reused"].append(name)
        else:
            value = stage(name, fn)
            record = {"value": value, "seconds": result["seconds"][name], "cpu_seconds": result["cpu_seconds"][name]}
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_json(path, record)
        result["seconds"][name], result["cpu_seconds"][name] = record["seconds"], record["cpu_seconds"]
        return record["value"]

    no_compute = {"steps": 0, "token_slots": 0, "tokens": 0, "masked_tokens": 0, "flops": 0.0, "tokens_per_kind": {}}
    if VARIANTS[variant].from_bert:
        result["bert"] = json.loads((plan.bert / "bert.json").read_text())  # F's head start, paid once
    if VARIANTS[variant].masking is None:  # R and F0: evaluated as they start (R: each run's init)
        if VARIANTS[variant].from_bert:
            model_dir = plan.bert / "as-wenzhi"
        else:
            model_dir = stage("pretrain", lambda: random_model(plan, plan.pretrain_dir(variant, seed) / "model", seed))
        result["seconds"].setdefault("pretrain", 0.0)
        result["cpu_seconds"].setdefault("pretrain", 0.0)
        result["compute"] = no_compute
        result["curve"] = evaluation("heldout_mlm", lambda: [{"step": 0, "tokens": 0, "loss": heldout_mlm_loss(
            WenzhiForPretraining.from_pretrained(model_dir), plan.heldout)}])
    else:
        result["compute"] = stage("accounting", lambda: consumed(plan, variant, seed))
        cfg = TrainConfig.from_dict(plan.train_config(variant, seed), plan.work)
        summary = stage("pretrain", lambda: pretrain(cfg))
        result["pretrain"] = {k: summary[k] for k in ("steps", "tokens_total", "first_loss_this_run", "last_loss")}
        result["pretrain_reused"] = bool(summary.get("reused"))
        model_dir = Path(cfg.output_dir) / "model"  # (a reused run's log may name the folder it was moved from)

        def curve():
            points = loss_curve(Path(cfg.output_dir), plan.heldout, result["compute"]["tokens_after_step"])
            if VARIANTS[variant].from_bert:  # where the continuation starts: the imported BERT
                start = WenzhiForPretraining.from_pretrained(plan.bert / "as-wenzhi")
                points.insert(0, {"step": 0, "tokens": 0, "loss": heldout_mlm_loss(start, plan.heldout)})
            return points

        result["curve"] = evaluation("heldout_mlm", curve)
        del result["compute"]["tokens_after_step"]

    def run_probe():
        items = probe_items(size.probe_candidates, size.probe_items)
        tokenizer = load_tokenizer(model_dir)  # the checkpoint's vocab.txt
        return probe.evaluate(probe.load_model(str(model_dir)), tokenizer, items)["heldout"]

    result["probe"] = evaluation("probe", run_probe)

    result["relation_selection"] = evaluation("sim", lambda: relation_selection(size, model_dir, run_dir / "qa",
                                                                                 Path(plan.kb), seed))
    for task in downstream.TASKS:
        dcfg = downstream.DownstreamConfig(task=task, init=str(model_dir), max_steps=size.downstream_steps, seed=seed,
                                           learning_rate=size.finetune_lr, freeze_universal=size.freeze_universal,
                                           train_limit=size.downstream_train, eval_limit=size.downstream_eval,
                                           threads=size.threads)
        result[task] = evaluation(task, lambda: {k: v for k, v in downstream.run(dcfg).items() if k != "config"})
    result["metrics"] = {
        "probe_acc_at_1": result["probe"]["acc@1"], "probe_mean_rank": result["probe"]["mean_rank"],
        "relation_selection_acc_at_1": result["relation_selection"]["accuracy_at_1"],
        # the no-learning lexical rule on the same candidates (the same for every run): what a
        # relation-selection head must beat before it can rank pretrainings
        "relation_selection_lexical_acc_at_1": result["relation_selection"]["all"]["accuracy_at_1_lexical"],
        "cluener_f1": result["cluener"]["entity_f1"], "thucnews_acc": result["thucnews"]["accuracy"],
        "heldout_mlm_loss": round(result["curve"][-1]["loss"], 4)}
    return result


def relation_selection(size: Size, model_dir: Path, qa: Path, kb: Path, seed: int) -> dict:
    """The SIM fine-tune (KgCLUE train) from `model_dir` into `qa`, the pipeline's NER head, then
    relation selection on KgCLUE dev (`qa_service.evaluate`)."""
    from wenzhi.kg.datadir import data_path
    from wenzhi.qa_service.evaluate import evaluate
    from wenzhi.qa_service.finetune import FinetuneConfig, finetune

    kgclue = data_path("kgclue/train.json")
    # relation_prior=False: the protocol every cached SIM evaluation was made with (issue 12's
    # learned relation prior landed later). The prior is counted from the training questions alone,
    # the same for every variant, and pulls the scores toward the no-learning rarest rule (0.971);
    # it would measure the prior, not the pretraining.
    finetune(FinetuneConfig(task="sim", out=qa, kb=kb, questions=[kgclue], init=model_dir, max_steps=size.sim_steps,
                            limit=size.sim_questions, seed=seed, threads=size.threads, lr=size.finetune_lr,
                            freeze_universal=size.freeze_universal, interaction=size.sim_interaction,
                            relation_prior=False))
    finetune(FinetuneConfig(task="ner", out=qa, kb=kb, questions=[kgclue], init=qa / "sim", lr=size.finetune_lr,
                            max_steps=size.qa_ner_steps, limit=size.sim_questions, seed=seed, threads=size.threads))
    scores = evaluate(data_path("kgclue/dev.json"), kb, qa, limit=size.relation_questions, use_gen=False,
                      threads=size.threads, progress=False)
    return {**scores["relation_selection"], "kgclue_score": scores["score"], "questions": scores["n"]}


def build_bert_for(plan: Plan) -> dict:
    """F's starting point (bench/knowledge_ablation_bert.py) trained on A's shards."""
    from knowledge_ablation_bert import build_bert

    s = plan.size
    cost = build_bert(plan.bert, plan.shards("A"), s.model, s.bert_steps, s.batch_size, s.seq_len,
                      s.bert_learning_rate, s.threads)
    _write_json(plan.bert.with_suffix(".json"), cost)  # beside the folder, with the task's log (as prepare's)
    return cost


# -- orchestration ---------------------------------------------------------------------------------
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
    parser.add_argument("--seeds", default="3", help="N (seeds 0..N-1) or a list, e.g. 1,2 or 2, (runs split over commands)")
    parser.add_argument("--variants", default="R,A,B,C,D,E,F0,FA,FE",
                        help="R: no pretraining; F0: the imported BERT as is; FA..FE: A..E continued from it")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (0: in this process, one by one)")
    parser.add_argument("--work", help="work folder (default runs/knowledge-ablation-SIZE); finished runs are kept")
    parser.add_argument("--kb", help="an existing TripleStore (default: import kb/knowledge.txt into --work)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a size field (YAML value), e.g. steps=3000 or prepare_overrides={mask_ratio: 0.2}")
    parser.add_argument("--plot", help="PNG path (default bench/knowledge_ablation_SIZE.png; quick: in --work)")
    parser.add_argument("--json", help="also write the summary here")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: the table, JSON and PNG of the runs finished so far (seeds may differ)")
    parser.add_argument("--worker", choices=["prepare", "bert", "run"], help=argparse.SUPPRESS)
    parser.add_argument("--plan", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--copy", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.size, args.seeds, args.jobs = "quick", "1", 0
    work = Path(args.work or ROOT / "runs" / f"knowledge-ablation-{args.size}").resolve()
    if args.worker:  # a subprocess of the command below: one prepare or one run
        plan_record = json.loads(Path(args.plan).read_text())
        plan = Plan(Size(**plan_record["size"]), work, plan_record["kb"])
        if args.worker == "prepare":
            _write_json(plan.shards(args.variant, copy=args.copy).with_suffix(".json"),
                        prepare_variant(plan, args.variant, args.copy))
        elif args.worker == "bert":
            build_bert_for(plan)
        else:
            _write_json(plan.run_dir(args.variant, args.seed) / "result.json", run_one(plan, args.variant, args.seed))
        return 0

    size = replace(SIZES[args.size], **_parse_sets(args.set))
    variants = parse_variants(args.variants)
    seeds = [int(x) for x in args.seeds.split(",") if x] if "," in args.seeds else list(range(int(args.seeds)))
    work.mkdir(parents=True, exist_ok=True)
    started, cpu0 = time.perf_counter(), time.process_time()
    print(f"knowledge ablation: size {args.size}, variants {','.join(variants)}, seeds {seeds}, "
          f"{size.steps} steps x {size.batch_size} rows x {size.seq_len} tokens per run; work {work}", flush=True)
    kb = Path(args.kb).resolve() if args.kb else work / "kb.sqlite"
    if not kb.exists():
        from wenzhi.kg import TripleStore
        from wenzhi.kg.datadir import data_path

        TripleStore.import_files([data_path("kb/knowledge.txt")], kb)
    plan = Plan(size, work, str(kb))
    shared = build_data(plan)
    print(f"data: {shared['heldout_sentences']} held-out sentences; removed {shared['removed']}", flush=True)
    if not args.report_only:
        adopted = adopt_evaluations(plan)
        if adopted:
            print(f"evaluations: {adopted} filed from earlier runs (a changed evaluation re-runs alone)", flush=True)
    plan_file = work / "plans" / f"{key([asdict(size), str(kb)], work)}.json"
    plan_file.parent.mkdir(exist_ok=True)
    _write_json(plan_file, {"size": asdict(size), "kb": str(kb)})
    me = [sys.executable, str(Path(__file__).resolve()), "--work", str(work), "--plan", str(plan_file)]
    maskings = sorted({m for v in variants for m in (VARIANTS[v].masking, VARIANTS[v].warmup) if m}
                      | ({"A"} if any(VARIANTS[v].from_bert for v in variants) else set()))  # the BERT reads A's
    prep_tasks = [(f"prepare {m}" + (f" copy {c}" if c else ""), plan.shards(m, copy=c).with_suffix(".json"),
                   me + ["--worker", "prepare", "--variant", m, "--copy", str(c)])
                  for m in maskings for c in range(size.mask_copies)]
    bert_tasks = [("BERT stand-in", plan.bert.with_suffix(".json"), me + ["--worker", "bert"])
                  ] if any(VARIANTS[v].from_bert for v in variants) else []
    run_tasks_ = [(f"run {v} seed {s}", plan.run_dir(v, s) / "result.json",
                   me + ["--worker", "run", "--variant", v, "--seed", str(s)]) for s in seeds for v in variants]
    usage: dict = {}
    if args.report_only:
        run_tasks_ = [t for t in run_tasks_ if t[1].exists()]
        variants = [v for v in variants if any(t[0].startswith(f"run {v} ") for t in run_tasks_)]
        print(f"report only: {len(run_tasks_)} finished runs of {','.join(variants)}", flush=True)
    elif args.jobs > 0:
        usage.update(run_tasks(prep_tasks, args.jobs))
        usage.update(run_tasks(bert_tasks, args.jobs))
        usage.update(run_tasks(run_tasks_, args.jobs))
    else:  # in this process (quick mode): no interpreter start-up per task
        for name, out, argv in prep_tasks:
            if not out.exists():
                _write_json(out, prepare_variant(plan, argv[argv.index("--variant") + 1], int(argv[argv.index("--copy") + 1])))
        if bert_tasks:
            build_bert_for(plan)
        for name, out, argv in run_tasks_:
            if not out.exists():
                out.parent.mkdir(parents=True, exist_ok=True)
                _write_json(out, run_one(plan, argv[argv.index("--variant") + 1], int(argv[argv.index("--seed") + 1])))
            print(f"  {name}: done", flush=True)
    results = []
    for name, out, _ in run_tasks_:
        r = json.loads(out.read_text())
        if name in usage:
            r["run_cpu_seconds"] = usage[name]["cpu_seconds"]
        results.append(r)
    summary = aggregate(results, variants, comparisons(variants))
    for v in variants:
        masking = VARIANTS[v].masking
        if masking:
            summary["variants"][v]["prepare"] = json.loads(plan.shards(v).with_suffix(".json").read_text())
            if f"prepare {masking}" in usage:
                summary["variants"][v]["prepare"]["cpu_seconds"] = usage[f"prepare {masking}"]["cpu_seconds"]
        if VARIANTS[v].from_bert:  # the head start F paid once, before its equal-compute continuation
            summary["variants"][v]["bert"] = json.loads((plan.bert / "bert.json").read_text())
    summary.update({"size": args.size, "seeds": seeds, "work": str(work), "data": shared,
                    "runs": sorted({str(plan.run_dir(v, 0).parent.relative_to(work)) for v in variants}),
                    "machine": f"{platform.node()} {os.cpu_count()} cores",
                    "wall_seconds": round(time.perf_counter() - started, 1),
                    "cpu_seconds": round(time.process_time() - cpu0 + sum(u["cpu_seconds"] for u in usage.values()), 1)})
    print_tables(summary, NAMES)
    plot_path = Path(args.plot) if args.plot else (work / "knowledge_ablation.png" if args.size == "quick"
                                                   else ROOT / "bench" / f"knowledge_ablation_{args.size}.png")
    plot(summary, results, plot_path, NAMES)
    summary["plot"] = str(plot_path)
    if args.json:
        _write_json(Path(args.json), summary)
    print(f"total: {summary['wall_seconds']:.0f} s wall, {summary['cpu_seconds']:.0f} s CPU; plot {plot_path}")
    print(json.dumps(summary, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
