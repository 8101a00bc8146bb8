"""bench/knowledge_ablation.py --quick: the variants differ only in masking (same text, same steps,
same token slots; F only in starting from the imported BERT), every evaluation runs, and the last
line is the JSON the issue asks for."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).parents[2]
METRICS = ["probe_acc_at_1", "probe_mean_rank", "relation_selection_acc_at_1", "relation_selection_lexical_acc_at_1",
           "cluener_f1", "thucnews_acc", "heldout_mlm_loss"]


def _documents(shards: Path) -> list[tuple]:
    """Every packed document of a shard folder with its masks undone (labels put back)."""
    from wenzhi.model.shards import ShardReader

    reader = ShardReader(shards)
    rows = reader.batch(np.arange(len(reader)))
    original = np.where(rows["labels"] != -100, rows["labels"], rows["input_ids"])
    docs = []
    for r in range(len(reader)):
        for d in np.unique(rows["document_ids"][r]):
            if d >= 0:
                docs.append(tuple(original[r][rows["document_ids"][r] == d].tolist()))
    return docs


def test_quick_ablation(tmp_path, kb_db, data_dir):
    work = tmp_path / "work"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "knowledge_ablation.py"), "--quick", "--work", str(work),
                           "--kb", str(kb_db)], capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env=os.environ | {"WENZHI_DATA": str(data_dir), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    variants = summary["variants"]
    # R: the same model without pretraining; F0: the imported BERT stand-in; FA, FE: A and E continued from it
    assert list(variants) == ["R", "A", "B", "C", "D", "E", "F0", "FA", "FE"]
    for entry in variants.values():
        for m in METRICS:
            assert set(entry[m]) == {"mean", "std"} and all(isinstance(x, float) for x in entry[m].values())
        assert entry["seconds"] >= 0
    assert variants["R"]["tokens"] == variants["R"]["steps"] == variants["F0"]["steps"] == 0
    # F's head start is reported, paid once: the BERT trained on A's text
    assert variants["FA"]["bert"] == variants["FE"]["bert"] and variants["FA"]["bert"]["steps"] > 0
    variants = {v: e for v, e in variants.items() if v not in ("R", "F0")}
    assert all(e["tokens"] > 0 for e in variants.values())
    # equal compute: the same steps and token slots; real tokens differ only by packing
    assert len({(e["steps"], e["token_slots"]) for e in variants.values()}) == 1
    tokens = [e["tokens"] for e in variants.values()]
    assert max(tokens) <= variants["A"]["token_slots"] and min(tokens) >= 0.8 * variants["A"]["token_slots"]
    # A, B and C are the same text, masked differently: the same documents once masks are undone
    shards = {v: next(p for p in (work / "shards").glob(f"{v}-*") if p.is_dir()) for v in "ABCDE"}
    docs = {v: _documents(shards[v]) for v in "ABC"}
    assert docs["A"] == docs["B"] and sorted(docs["A"]) == sorted(docs["C"])
    masked = {v: json.loads((shards[v] / "meta.json").read_text()) for v in "ABCDE"}
    assert {v: sorted(m["curriculum"][0]["strategies"]) for v, m in masked.items()} == {
        "A": ["char"], "B": ["char", "word"], "C": ["char", "entity", "phrase", "word"],
        "D": ["char", "entity", "phrase", "uktp", "word"], "E": ["char", "entity", "phrase", "retrieval", "uktp", "word"]}
    # D and E put UKTP pairs (kind 2) and knowledge segments (kind 3) into the same slots
    assert "2" in variants["D"]["tokens_per_kind"] and "3" in variants["E"]["tokens_per_kind"]
    # every run trained with the same recipe: only the shards (and so the output folder) differ
    configs = {}
    for v in ["A", "B", "C", "D", "E", "FA", "FE"]:
        log = next((work / "pretrain").glob(f"{v}-*/seed-0/train_log.jsonl"))
        start = json.loads(log.read_text().splitlines()[0])
        config = start["config"]
        for phase in config["phases"]:
            assert Path(phase.pop("shards")) == shards[v[-1]]  # FA reads A's shards, FE E's
        assert Path(config.pop("output_dir")).parts[-2].startswith(f"{v}-")
        configs[v] = config
    init = {v: configs[v].pop("init_from") for v in configs}
    assert {init[v] for v in "ABCDE"} == {None}  # A-E from a random init, FA and FE from the same BERT
    bert = {v: Path(init[v]) for v in ("FA", "FE")}
    assert bert["FA"] == bert["FE"] and (bert["FA"] / "config.json").exists()
    assert json.loads((bert["FA"] / "config.json").read_text())["model_type"] == "bert"  # a plain HF folder
    assert len({json.dumps(c, sort_keys=True) for c in configs.values()}) == 1
    assert {"A-R", "B-A", "E-D", "E-A", "FA-F0", "FE-FA", "FA-A", "FE-E"} <= set(summary["differences"])
    # the probe's held-out facts were taken out of the text every variant trains on
    assert summary["data"]["removed"]["agrikg_rows"] > 0
    assert Path(summary["plot"]).stat().st_size > 10_000

    # a changed evaluation re-runs that evaluation alone: the SIM fine-tune with other settings, the
    # pretraining and the other evaluations kept; the curriculum remedy (EC) reads A's shards
    # for the first half of the same steps and E's for the second; the short-segment remedy (ES)
    # trains on its own shards, whose knowledge segments are at most 32 tokens + [SEP]
    pretrained = (work / "pretrain").glob("A-*/seed-0/train_log.jsonl")
    log_before = next(pretrained).read_text()
    again = subprocess.run([sys.executable, str(ROOT / "bench" / "knowledge_ablation.py"), "--quick", "--work", str(work),
                            "--kb", str(kb_db), "--variants", "A,EC,ES", "--set", "sim_steps=4"], capture_output=True,
                           text=True, timeout=600, cwd=ROOT,
                           env=os.environ | {"WENZHI_DATA": str(data_dir), "OMP_NUM_THREADS": "1"})
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert next((work / "pretrain").glob("A-*/seed-0/train_log.jsonl")).read_text() == log_before
    results = [json.loads(p.read_text()) for p in (work / "runs").glob("A-*/seed-0/result.json")]
    assert len(results) == 2  # the first command's and this one's (another SIM setting, its own folder)
    rerun = next(r for r in results if r["reused"])
    assert rerun["reused"] == ["heldout_mlm", "probe", "cluener", "thucnews"]  # all but the SIM
    assert 0 < rerun["metrics"]["relation_selection_lexical_acc_at_1"] <= 1
    ec = json.loads(again.stdout.strip().splitlines()[-1])["variants"]
    assert (ec["EC"]["steps"], ec["EC"]["token_slots"]) == (ec["A"]["steps"], ec["A"]["token_slots"])
    config = json.loads(next((work / "pretrain").glob("EC-*/seed-0/train_log.jsonl")).read_text().splitlines()[0])["config"]
    assert [Path(p["shards"]) for p in config["phases"]] == [shards["A"], shards["E"]]
    assert [p["steps"] for p in config["phases"]] == [6, 6]
    assert (ec["ES"]["steps"], ec["ES"]["token_slots"]) == (ec["A"]["steps"], ec["A"]["token_slots"])
    short = next(p for p in (work / "shards").glob("ES-*") if p.is_dir())
    assert "3" in ec["ES"]["tokens_per_kind"]  # knowledge segments were appended
    assert 0 < _longest_segment(short) <= 33
    # the cost summed from the pieces' own clocks: every piece of the first command found and timed
    cost = subprocess.run([sys.executable, str(ROOT / "bench" / "knowledge_ablation_cost.py"), "--work", str(work),
                           "--size", "quick", "--seeds", "1", "--kb", str(kb_db)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert cost.returncode == 0, cost.stderr[-3000:]
    cost = json.loads(cost.stdout.strip().splitlines()[-1])
    assert cost["missing"] == [] and cost["total_cpu_seconds"] > 0
    assert {r["variant"]: r["pretrainings_untimed"] for r in cost["variants"]} == dict.fromkeys(
        ["R", "A", "B", "C", "D", "E", "F0", "FA", "FE"], 0)
    # the no-learning floor under the held-out MLM loss: between a perfect and a uniform guess
    unigram = subprocess.run([sys.executable, str(ROOT / "bench" / "knowledge_ablation_unigram.py"), "--work", str(work),
                              "--size", "quick"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert unigram.returncode == 0, unigram.stderr[-3000:]
    unigram = json.loads(unigram.stdout.strip().splitlines()[-1])
    assert 0 < unigram["unigram_heldout_mlm_loss"] < unigram["uniform_loss"] and unigram["masked_tokens"] > 0


def _longest_segment(shards: Path) -> int:
    """The longest knowledge segment (token type 2) of any packed document in a shard folder."""
    from wenzhi.model.shards import ShardReader

    reader = ShardReader(shards)
    rows = reader.batch(np.arange(len(reader)))
    longest = 0
    for r in range(len(reader)):
        for d in np.unique(rows["document_ids"][r]):
            if d >= 0:
                in_doc = rows["document_ids"][r] == d
                longest = max(longest, int((rows["token_type_ids"][r][in_doc] == 2).sum()))
    return longest


def test_short_segment_remedy_changes_only_the_segment():
    """ES is E's prepare config with the knowledge segment halved; no other variant's folder moved."""
    sys.path.insert(0, str(ROOT / "bench"))
    from knowledge_ablation_plan import SIZES, Plan

    plan = Plan(SIZES["cpu"], Path("/work"), "/work/kb.sqlite")
    e, es = plan.prepare_config("E"), plan.prepare_config("ES")
    assert (e.pop("augment"), es.pop("augment")) == ({"max_tokens": 64, "min_tokens": 8}, {"max_tokens": 32, "min_tokens": 8})
    assert e == es
    # the folders every finished CPU run lives in (bench/RESULTS.md) keep their names
    assert plan.shards("E").name == "E-951ad77249" and plan.shards("EL").name == "EL-c8079409f4"
    assert plan.pretrain_dir("E", 0).parent.name == "E-342a023323"
    assert plan.run_dir("E", 0).parent.name == "E-184e08ad7b"


def test_gpu_size_masks_the_text_again_instead_of_repeating_it():
    """--size gpu reads 60x the CPU size's token slots from the same ~9M characters: its runs go
    through 10 masked copies of the text (prepare seeds 13-22), an equal share of the steps each."""
    sys.path.insert(0, str(ROOT / "bench"))
    from knowledge_ablation_plan import PREPARE_SEED, SIZES, Plan

    plan = Plan(SIZES["gpu"], Path("/work"), "/work/kb.sqlite")
    phases = plan.train_config("A", 0)["phases"]
    assert [p["steps"] for p in phases] == [1500] * 10 and len({p["shards"] for p in phases}) == 10
    assert [plan.prepare_config("A", c)["seed"] for c in range(10)] == list(range(PREPARE_SEED, PREPARE_SEED + 10))
    assert phases[0]["shards"] == str(plan.shards("A"))  # copy 0 is the CPU size's masking of its text
    curriculum = plan.train_config("EC", 0)["phases"]  # half the steps on A's copies, half on E's
    assert [Path(p["shards"]).name[:2] for p in curriculum] == ["A-"] * 10 + ["E-"] * 10
    assert sum(p["steps"] for p in curriculum) == SIZES["gpu"].steps
    assert plan.pretrain_dir("A", 0) != Plan(SIZES["cpu"], Path("/work"), "/work/kb.sqlite").pretrain_dir("A", 0)
