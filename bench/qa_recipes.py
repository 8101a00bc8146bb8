"""Recipe measurements for the SIM and GEN heads: accuracy on held-out TRAINING questions against
training CPU time (issue 12). Never dev: recipes are chosen here, dev is reported once by the demo.

    .venv/bin/python bench/qa_recipes.py --kb runs/demo/kb.sqlite --init runs/demo/pretrain --task sim \\
        --name match600 -- --unfreeze --max-steps 600 --lr 2e-3 --threads 1
    .venv/bin/python bench/qa_recipes.py --kb runs/demo/kb.sqlite --init runs/demo/pretrain --task gen \\
        --name copy900 -- --unfreeze --max-steps 900 --lr 2e-3 --threads 1

Splits (written to --work once): KgCLUE train minus its last 1,000 questions and NLPCC train's
training part (`holdout_split(0.2)`'s first part) minus its last 1,000 are trained on; the two
1,000-question tails are the hold-outs. NLPCC's 20% evaluation hold-out is never touched.
`wenzhi finetune` runs as a child process; its CPU seconds (user + system) are the cost.
`--score-only` scores a head trained before (e.g. one whose relation prior was fitted afterwards with
`python -m wenzhi.qa_service.relation_prior --sim WORK/NAME/sim --kb KB --questions WORK/splits/kgclue_train.json
WORK/splits/nlpcc_train.json`).

SIM: relation selection accuracy@1 given the gold head (with the head's relation prior where it has one,
and without it: `sim_without_prior`), among the KB's 30 most frequent relations
plus the head's and its homonyms' ("all", as `wenzhi evaluate` measures it) and among the head's
and homonyms' relations only where there are two or more ("own"), beside the lexical rule and
"rarest" (the candidate with the fewest KB triples).
GEN: the gold (head, relation) in the top trie-constrained beam and in any of 3 beams on the first
`--gen-questions` KgCLUE hold-out questions, decoded plain and renormalised over the trie's
allowed tokens (what the pipeline does). Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_splits(data: Path, work: Path) -> dict[str, Path]:
    from wenzhi.qa_service.data import holdout_split, read_qa

    paths = {k: work / f"{k}.json" for k in ("kgclue_train", "kgclue_hold", "nlpcc_train", "nlpcc_hold")}
    if all(p.exists() for p in paths.values()):
        return paths
    kgclue = read_qa(data / "kgclue" / "train.json")
    nlpcc, _ = holdout_split(read_qa(data / "nlpcc2016" / "train.json"), 0.2, seed=0)
    work.mkdir(parents=True, exist_ok=True)
    for key, rows in (("kgclue_train", kgclue[:-1000]), ("kgclue_hold", kgclue[-1000:]),
                      ("nlpcc_train", nlpcc[:-1000]), ("nlpcc_hold", nlpcc[-1000:])):
        with open(paths[key], "w", encoding="utf-8") as fh:
            for ex in rows:
                fh.write(json.dumps({"id": ex.id, "question": ex.question, "answer": ex.answer}, ensure_ascii=False) + "\n")
    return paths


def train(task: str, kb: Path, out: Path, init: Path | None, splits, extra: list[str]) -> tuple[dict, float]:
    cmd = [sys.executable, "-m", "wenzhi", "finetune", task, "--kb", str(kb), "--output", str(out),
           "--questions", str(splits["kgclue_train"]), str(splits["nlpcc_train"]), "--nlpcc-holdout", "0"]
    if init is not None:
        cmd += ["--init", str(init)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(cmd + extra, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"finetune failed ({done.returncode}):\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return report, cpu


def sim_accuracy(sim_dir: Path, kb: Path, splits) -> dict:
    import torch

    from wenzhi.kg import TripleStore, parse_name
    from wenzhi.model.relation_matching import WenzhiForRelationMatching

    from wenzhi.qa_service.data import find_mention, mention_names, read_qa, selection_candidates
    from wenzhi.qa_service.heads import load_sim_head, load_tokenizer_for
    from wenzhi.qa_service.lexical import lexical_scores
    from wenzhi.qa_service.packing import (encode_questions, packed_batch, relation_segments, sim_logits,
                                           universal_packed)
    from wenzhi.qa_service.pipeline import outside_spans
    from wenzhi.qa_service.relation_prior import RelationPrior
    from wenzhi.qa_service.relation_states import relation_scorer

    store = TripleStore(kb)
    tok = load_tokenizer_for(sim_dir)
    sim = load_sim_head(sim_dir)
    matching = isinstance(sim, WenzhiForRelationMatching)
    prior = RelationPrior.load(sim_dir) if matching else None
    table = relation_scorer(sim, tok, prior) if matching else None
    bare = relation_scorer(sim, tok) if prior is not None else None  # the same head without its prior
    counts = dict(store.relation_counts())
    frequent = [r for r, _ in store.relation_counts()[:30]]
    out = {}
    with torch.inference_mode():
        for name in ("kgclue_hold", "nlpcc_hold"):
            examples = read_qa(splits[name])
            right = {kind: [0, 0, 0, 0, 0] for kind in ("all", "own")}  # n, SIM, lexical, rarest, SIM w/o prior
            for i in range(0, len(examples), 32):
                batch = examples[i : i + 32]
                spans = [find_mention(ex.question, mention_names(ex.head, store)) for ex in batch]
                enc_tok = tok([ex.question for ex in batch], max_length=64, truncation=True,
                              return_offsets_mapping=True)
                for kind in ("all", "own"):
                    rels = []
                    for ex in batch:
                        with_top, own = selection_candidates(store, ex, frequent)
                        rels.append(with_top if kind == "all" else own)
                    if matching:
                        enc = encode_questions(sim, enc_tok["input_ids"], tok.pad_token_id)
                        mask = outside_spans(enc_tok["offset_mapping"], [[s] if s else [] for s in spans])
                        logits = table.score(enc, rels, mask).tolist()
                        bare_logits = bare.score(enc, rels, mask).tolist() if bare is not None else logits
                    else:
                        packed = packed_batch(enc_tok["input_ids"], [relation_segments(tok, r) for r in rels],
                                              tok.pad_token_id)
                        logits = sim_logits(sim, sim.wenzhi.nlu(universal_packed(sim, packed)),
                                            packed.segment_starts).tolist()
                        bare_logits = logits
                    j = 0
                    for ex, r, span in zip(batch, rels, spans):
                        scores, j = logits[j : j + len(r)], j + len(r)
                        if kind == "own" and len(r) < 2:
                            continue
                        lex = lexical_scores(ex.question, r, span or parse_name(ex.head)[0])
                        right[kind][0] += 1
                        right[kind][1] += r[max(range(len(r)), key=scores.__getitem__)] == ex.relation
                        right[kind][2] += r[max(range(len(r)), key=lex.__getitem__)] == ex.relation
                        right[kind][3] += min(r, key=lambda x: counts.get(x, 0)) == ex.relation
                        right[kind][4] += r[max(range(len(r)), key=bare_logits[j - len(r) : j].__getitem__)] == ex.relation
            out[name] = {kind: {"n": n, **{key: round(v / max(n, 1), 4) for key, v in
                                           zip(("sim", "lexical", "rarest", "sim_without_prior"), counts_)}}
                         for kind, (n, *counts_) in right.items()}
    store.close()
    return out


def gen_accuracy(gen_dir: Path, kb: Path, splits, n_questions: int) -> dict:
    import torch

    from wenzhi.kg import TripleStore
    from wenzhi.model.modeling import WenzhiForPrefixLM

    from wenzhi.qa_service.data import read_qa
    from wenzhi.qa_service.heads import load_tokenizer_for, pad_rows
    from wenzhi.qa_service.trie import ensure_trie, gen_layout

    store = TripleStore(kb)
    tok = load_tokenizer_for(gen_dir)
    model = WenzhiForPrefixLM.from_pretrained(gen_dir).eval()
    trie = ensure_trie(gen_dir, store, tok, gen_layout(model))
    examples = read_qa(splits["kgclue_hold"], limit=n_questions)
    out = {}
    with torch.inference_mode():
        for renormalize in (False, True):
            top = anywhere = 0
            for i in range(0, len(examples), 16):
                batch = examples[i : i + 16]
                ids = pad_rows(tok([ex.question for ex in batch], max_length=48, truncation=True)["input_ids"],
                               tok.pad_token_id)
                result = model.generate(ids, attention_mask=(ids != tok.pad_token_id).long(), max_new_tokens=64,
                                        num_beams=3, num_return_sequences=3, renormalize=renormalize,
                                        allowed_tokens_fn=lambda b, prefix: trie.allowed_next(prefix))
                for ex, seqs, scores in zip(batch, result.sequences.tolist(), result.scores.tolist()):
                    beams = []
                    for seq, score in zip(seqs, scores):
                        if score == float("-inf"):
                            continue
                        seq = seq[: seq.index(trie.sep_id) + 1] if trie.sep_id in seq else seq
                        beams.append({(store.entity(h.head_id).name, h.relation) for h in trie.lookup(seq)})
                    gold = (ex.head, ex.relation)
                    top += bool(beams) and gold in beams[0]
                    anywhere += any(gold in b for b in beams)
            key = "renormalised" if renormalize else "plain"
            out[key] = {"top_beam": round(top / len(examples), 4), "any_beam": round(anywhere / len(examples), 4)}
    store.close()
    return {"n": len(examples), **out}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kb", required=True, type=Path)
    p.add_argument("--task", required=True, choices=["sim", "gen"])
    p.add_argument("--name", required=True, help="the recipe's name: its model goes to WORK/NAME")
    p.add_argument("--init", type=Path, help="checkpoint to fine-tune from (passed to `wenzhi finetune`)")
    p.add_argument("--work", type=Path, default=Path("/tmp/qa_recipes"))
    p.add_argument("--data-dir", type=Path, default=None, help="default: $WENZHI_DATA or ../shared/data")
    p.add_argument("--gen-questions", type=int, default=300)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the evaluation")
    p.add_argument("--score-only", action="store_true",
                   help="score WORK/NAME/<task> as it is, without training (train_cpu_s is then 0)")
    p.add_argument("finetune_args", nargs=argparse.REMAINDER, help="after --: arguments of `wenzhi finetune`")
    args = p.parse_args(argv)
    import torch

    from wenzhi.kg.datadir import data_dir

    torch.set_num_threads(args.threads)
    data = args.data_dir or data_dir()
    os.environ.setdefault("WENZHI_DATA", str(data))
    splits = write_splits(data, args.work / "splits")
    extra = [a for a in args.finetune_args if a != "--"]
    started = time.time()
    if args.score_only:  # a head trained earlier (e.g. with a relation prior fitted onto it since)
        report, cpu = json.loads((args.work / args.name / args.task / "finetune.json").read_text()), 0.0
    else:
        report, cpu = train(args.task, args.kb, args.work / args.name, args.init, splits, extra)
    head = args.work / args.name / args.task
    accuracy = (sim_accuracy(head, args.kb, splits) if args.task == "sim"
                else gen_accuracy(head, args.kb, splits, args.gen_questions))
    print(json.dumps({"recipe": args.name, "task": args.task, "finetune_args": extra, "init": str(args.init),
                      "train_cpu_s": round(cpu, 1), "steps": report.get("steps"), "last_loss": report.get("last_loss"),
                      "accuracy": accuracy, "wall_s": round(time.time() - started, 1)}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
