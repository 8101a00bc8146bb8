"""What bench/knowledge_ablation.py runs: the maskings and variants, the sizes, and where each piece
lives in the work folder (`Plan`: every folder named by a hash of what made it)."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

KNOWLEDGE = {"char": 1, "word": 2, "phrase": 1, "entity": 2}  # the project's weights (prepare_full.yaml)
MASKING = {
    "A": {"char": 1},
    "B": {"char": 1, "word": 2},
    "C": KNOWLEDGE,
    "D": {**KNOWLEDGE, "uktp": 1},
    "E": {**KNOWLEDGE, "uktp": 1, "retrieval": 1},
    # remedy (issue 15): E's strategies with plain characters weighted up, so knowledge strategies
    # mask 2.5 of every 8.5 texts instead of 5 of 8 (the triple corpora's UKTP pairs unchanged)
    "EL": {"char": 4, "word": 2, "phrase": 0.5, "entity": 1, "uktp": 0.5, "retrieval": 0.5},
    # remedy: E's strategies with a knowledge segment half as long (AUGMENT), so a retrieval example
    # keeps more of its own text (93 tokens instead of 63 of a 128-token row)
    "ES": {**KNOWLEDGE, "uktp": 1, "retrieval": 1},
}
AUGMENT = {"ES": {"max_tokens": 32, "min_tokens": 8}}  # the knowledge segment per masking (others: E's)
DEFAULT_AUGMENT = {"max_tokens": 64, "min_tokens": 8}  # at most half a 128-token row


@dataclass(frozen=True)
class Variant:
    description: str
    masking: str | None  # whose shards it trains on (MASKING's key); None: not pretrained here
    from_bert: bool = False  # starts from the imported BERT stand-in (variant F), else a random init
    # a curriculum: the first half of the steps on this masking's shards, the second on `masking`'s
    # (two trainer phases, each its own seeded shuffle; the same steps and slots as every run)
    warmup: str | None = None

    @property
    def strategies(self) -> dict | None:
        return MASKING[self.masking] if self.masking else None


VARIANTS = {
    "R": Variant("no pretraining (the same model, random init)", None),  # what fine-tuning alone reaches
    "A": Variant("characters only (BERT)", "A"),
    "B": Variant("+ whole words", "B"),
    "C": Variant("+ phrases and entities (ERNIE 1.0)", "C"),
    "D": Variant("+ UKTP (ERNIE 3.0)", "D"),
    "E": Variant("+ retrieval-augmented masking (OBERT)", "E"),
    # F: the same maskings continued from an imported BERT-style checkpoint (knowledge_ablation_bert.py)
    "F0": Variant("imported BERT, not continued", None, from_bert=True),
    "FA": Variant("imported BERT + plain MLM (A)", "A", from_bert=True),
    "FB": Variant("imported BERT + B", "B", from_bert=True),
    "FC": Variant("imported BERT + C", "C", from_bert=True),
    "FD": Variant("imported BERT + D", "D", from_bert=True),
    "FE": Variant("imported BERT + C+D+E (E)", "E", from_bert=True),
    # remedies tried when knowledge masking did not win (bench/RESULTS.md): E's knowledge later, or less of it
    "EC": Variant("curriculum: A's char masking, then E's (half the steps each)", "E", warmup="A"),
    "EL": Variant("E at a lower knowledge share (char weighted 4 of 8.5)", "EL"),
    "ES": Variant("E with a knowledge segment half as long (32 tokens)", "ES"),
}
NAMES = {v: d.description for v, d in VARIANTS.items()}
FAMILIES = (["R", "A", "B", "C", "D", "E"], ["F0", "FA", "FB", "FC", "FD", "FE"])
REMEDIES = {"EC": "E", "EL": "E", "ES": "E"}  # each against the variant it remedies and against plain MLM (A)
_NAME = r"F[0A-E]|E[CLS]|[RA-E]"


def parse_variants(text: str) -> list[str]:
    """`RABCDE`, `A,FA,FE` or `R A F0`: the variants named, in that order."""
    import re

    names = re.findall(_NAME, text.upper())
    if not names or re.sub(_NAME + r"|[\s,]", "", text.upper()):
        raise SystemExit(f"error: --variants {text!r}: use {', '.join(VARIANTS)}")
    return list(dict.fromkeys(names))


def comparisons(variants: list[str]) -> list[tuple[str, str]]:
    """Each variant against the one before it in its family and against the family's plain-MLM run
    (A, or FA from the BERT); and F against the same masking from scratch."""
    pairs = []
    for family in FAMILIES:
        present = [v for v in family if v in variants]
        pairs += list(zip(present[1:], present))
        base = next((v for v in present if VARIANTS[v].masking), None)
        if base:
            pairs += [(v, base) for v in present[present.index(base) + 2:]]
    pairs += [(v, v[1]) for v in variants if v.startswith("F") and v[1] in variants]
    pairs += [(v, ref) for v, base in REMEDIES.items() if v in variants for ref in (base, "A") if ref in variants]
    return pairs


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
    # BERT's dupe_factor: the text masked this many times (prepare seeds 13, 14, ...); a run reads the
    # copies one after another, an equal share of its steps each, so a run longer than the text
    # repeats text under new masks rather than the same masks
    mask_copies: int = 1
    max_epochs: float = 1.0  # how often a run may read each copy's rows (1: no row twice); a guard only
    prepare_overrides: dict = field(default_factory=dict)  # e.g. {"curriculum": "default"} for an attempt
    # Fine-tuning, the same for every task: the whole model trained (BERT's and ERNIE 1.0's protocol;
    # with the universal module frozen, as the service does, every metric sat at chance at this
    # scale: bench/RESULTS.md), at a learning rate that suits the tiny encoder
    finetune_lr: float = 2e-3
    freeze_universal: bool = False
    # relation selection: issue 12's recipe (`wenzhi finetune sim` defaults: the relation-matching
    # head, listwise over negatives drawn as evaluation draws candidates, ~46 per question), which
    # learns its task (0.95-0.98 from the demo's tiny pretraining); the pair head ("full") that
    # issue 15's first table used scored 0.29-0.48, below the no-learning lexical rule's 0.846
    sim_interaction: str = "match"
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
    # F's stand-in for a downloaded BERT: BertForMaskedLM of the same shape, trained on A's shards
    bert_steps: int = 500
    bert_learning_rate: float = 2e-3


SIZES = {
    "quick": Size(people_daily=40, reviews=20, agrikg_rows=80, kdconv_dialogues=2, heldout_people_daily=20,
                  heldout_reviews=10, seq_len=64, batch_size=8, steps=12, curve_points=3,
                  model=dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, num_universal_layers=1,
                             num_nlu_layers=1, num_nlg_layers=1, hidden_dropout_prob=0.0,
                             attention_probs_dropout_prob=0.0),
                  sim_steps=6, sim_questions=200, qa_ner_steps=3, relation_questions=30, downstream_steps=6,
                  downstream_train=200, downstream_eval=60, probe_items=15, probe_candidates=10, bert_steps=12),
    # all the text (a run reads 40% of A's rows); about 5 CPU-minutes a run (bench/RESULTS.md)
    "cpu": Size(people_daily=18000, reviews=16000, agrikg_rows=None, kdconv_dialogues=None, heldout_people_daily=600,
                heldout_reviews=300, steps=500, curve_points=5, sim_steps=300, relation_questions=1000,
                downstream_steps=300, downstream_eval=3000, probe_items=300),
    # a GPU: the small config's encoder on all the text, 30x the steps at twice the batch (60x the
    # token slots); the ~9M characters here fill ~40k rows, so the text is masked 10 times and each
    # copy read 2-2.5 times (1,500 steps x 64 rows per copy)
    "gpu": Size(people_daily=17000, reviews=15000, agrikg_rows=None, kdconv_dialogues=None,
                heldout_people_daily=1500, heldout_reviews=1500, batch_size=64, steps=15000, learning_rate=1e-3,
                mask_copies=10, max_epochs=3.0,
                model=dict(hidden_size=256, num_attention_heads=4, intermediate_size=1024, num_universal_layers=2,
                           num_nlu_layers=2, num_nlg_layers=1), threads=4),
}
PREPARE_SEED, HELDOUT_SEED, HELDOUT_FRACTION = 13, 7, 0.1
TRAIN_FIELDS = ("seq_len", "batch_size", "steps", "curve_points", "learning_rate", "model", "threads")
BERT_FIELDS = ("bert_steps", "bert_learning_rate")  # they name the BERT's folder (and so F's), no other
# Each evaluation of a pretrained model with the settings that change its result: a stage's result
# is kept under a key of these (and its code revision), so changing one evaluation re-runs that one
# alone, never the pretraining nor the other evaluations. Bump a revision when its code changes a score.
_FINETUNE = ("finetune_lr", "freeze_universal", "threads")
EVALUATIONS = {
    "heldout_mlm": ((), 1),
    "probe": (("probe_items", "probe_candidates"), 1),
    "sim": (_FINETUNE + ("sim_interaction", "sim_steps", "sim_questions", "qa_ner_steps", "relation_questions"), 1),
    "cluener": (_FINETUNE + ("downstream_steps", "downstream_train", "downstream_eval"), 1),
    "thucnews": (_FINETUNE + ("downstream_steps", "downstream_train", "downstream_eval"), 1),
}


def key(value, work: Path) -> str:
    """A short hash of a config, with the work folder's own path left out (folders can move)."""
    text = json.dumps(value, sort_keys=True, default=str).replace(str(work), "$WORK")
    return hashlib.blake2b(text.encode(), digest_size=5).hexdigest()


@dataclass
class Plan:
    """Where each piece of the ablation lives in the work folder, named by what made it."""

    size: Size
    work: Path
    kb: str

    @property
    def data(self) -> Path:  # the corpora without held-out facts
        return self.work / f"data-{key([self.size.agrikg_rows, self.size.kdconv_dialogues], self.work)}"

    def heldout_config(self) -> dict:
        s = self.size
        return {"seq_len": s.seq_len, "seed": HELDOUT_SEED, "mask_ratio": 0.15, "strategies": {"char": 1}, "corpora": [
            {"path": "corpus/people_daily_1998_pos.txt", "format": "people_daily", "skip": s.people_daily,
             "limit": s.heldout_people_daily},
            {"path": "corpus/reviews_pos.txt", "format": "text", "skip": s.reviews, "limit": s.heldout_reviews},
            {"path": "corpus/reviews_neg.txt", "format": "text", "skip": s.reviews, "limit": s.heldout_reviews}]}

    @property
    def heldout(self) -> Path:  # the held-out MLM shards
        return self.work / f"heldout-{key(self.heldout_config(), self.work)}"

    def prepare_config(self, masking: str, copy: int = 0) -> dict:
        """A masking's prepare config: the same corpora and settings, its own masking strategies.
        D and E also read the triple corpora as triple-sentence pairs (what UKTP trains on).
        `copy`: the text masked again (Size.mask_copies), with the next prepare seed."""
        s, strategies = self.size, MASKING[masking]
        knowledge = bool({"uktp", "retrieval"} & set(strategies))
        return {
            "seq_len": s.seq_len, "seed": PREPARE_SEED + copy, "mask_ratio": s.mask_ratio, "heldout_fraction": HELDOUT_FRACTION,
            "kb": self.kb if {"entity", "uktp", "retrieval"} & set(strategies) else None,
            "corpora": [
                {"path": "corpus/people_daily_1998_pos.txt", "format": "people_daily", "limit": s.people_daily},
                {"path": "corpus/reviews_pos.txt", "format": "text", "limit": s.reviews},
                {"path": "corpus/reviews_neg.txt", "format": "text", "limit": s.reviews},
                {"path": str(self.data / "agrikg.tsv"), "format": "agrikg", "use": "triples" if knowledge else "text"},
                {"path": str(self.data / "kdconv"), "format": "kdconv", "use": "both" if knowledge else "text"}],
            "strategies": strategies, "curriculum": None, "augment": AUGMENT.get(masking, DEFAULT_AUGMENT),
            **s.prepare_overrides,
        }

    def shards(self, variant: str, warmup: bool = False, copy: int = 0) -> Path:
        """The shards a variant trains on (F's are its masking's: FA reads A's); `warmup`: those of
        a curriculum's first half (EC's are A's); `copy`: which masked copy of the text."""
        masking = VARIANTS[variant].warmup if warmup else VARIANTS[variant].masking
        return self.work / "shards" / f"{masking}-{key(self.prepare_config(masking, copy), self.work)}"

    @property
    def bert(self) -> Path:
        """F's starting point: the BERT stand-in, named by its shards and training settings."""
        record = {"shards": self.shards("A").name, "bert": {k: getattr(self.size, k) for k in BERT_FIELDS},
                  "train": {k: getattr(self.size, k) for k in ("seq_len", "batch_size", "model", "threads")}}
        return self.work / f"bert-{key(record, self.work)}"

    def train_config(self, variant: str, seed: int) -> dict:
        s = self.size
        order = "sequential" if s.prepare_overrides.get("curriculum") else "shuffle"
        parts = [(False, s.steps)]
        if VARIANTS[variant].warmup:  # the curriculum: plain masking first, the same steps in all
            parts = [(True, s.steps // 2), (False, s.steps - s.steps // 2)]
        phases = []
        for warmup, steps in parts:  # each part over the masked copies in turn, an equal share each
            shares = [steps // s.mask_copies] * s.mask_copies
            shares[-1] += steps - sum(shares)
            phases += [{"shards": str(self.shards(variant, warmup, copy)), "steps": n, "batch_size": s.batch_size,
                        "order": order} for copy, n in enumerate(shares)]
        return {"output_dir": str(self.pretrain_dir(variant, seed)), "phases": phases,
                "model": dict(s.model), "optimizer": "adamw", "learning_rate": s.learning_rate, "warmup_ratio": 0.06,
                "lr_scheduler": "linear", "lm_weight": 0.0, "seed": seed,
                "checkpoint_every": max(1, s.steps // s.curve_points), "keep_checkpoints": s.curve_points + 1,
                "log_every": max(1, s.steps // 20), "num_threads": s.threads, "report_to": "none",
                **({"init_from": str(self.bert / "bert")} if VARIANTS[variant].from_bert else {})}

    def pretrain_dir(self, variant: str, seed: int) -> Path:
        """Keyed by the shards and the training settings, so evaluations can change without retraining."""
        train = {k: getattr(self.size, k) for k in TRAIN_FIELDS}
        record = {"shards": self.shards(variant).name if VARIANTS[variant].masking else None, "train": train}
        if VARIANTS[variant].from_bert:
            record["init"] = self.bert.name
        if VARIANTS[variant].warmup:
            record["warmup"] = self.shards(variant, warmup=True).name
        if self.size.mask_copies > 1:  # (copy 0 names the text; one copy keeps the folders of earlier runs)
            record["mask_copies"] = self.size.mask_copies
        return self.work / "pretrain" / f"{variant}-{key(record, self.work)}" / f"seed-{seed}"

    def run_dir(self, variant: str, seed: int) -> Path:
        """The evaluations of one pretrained model: keyed by it and every evaluation setting."""
        corpus = {"people_daily", "reviews", "agrikg_rows", "kdconv_dialogues", "prepare_overrides", "mask_ratio",
                  "mask_copies", "max_epochs"}
        evaluation = {k: v for k, v in asdict(self.size).items() if k not in corpus | set(TRAIN_FIELDS) | set(BERT_FIELDS)}
        record = {"pretrain": self.pretrain_dir(variant, seed).parent.name, "heldout": self.heldout.name,
                  "eval": evaluation}
        return self.work / "runs" / f"{variant}-{key(record, self.work)}" / f"seed-{seed}"

    def evaluation(self, variant: str, seed: int, stage: str) -> Path:
        """One evaluation's result for one pretrained model, keyed by that evaluation's settings."""
        fields, revision = EVALUATIONS[stage]
        settings = {"revision": revision, **{k: getattr(self.size, k) for k in fields}}
        if stage == "heldout_mlm":
            settings["heldout"] = self.heldout.name
        pretrained = self.pretrain_dir(variant, seed)
        return (self.work / "evaluations" / pretrained.parent.name / pretrained.name
                / f"{stage}-{key(settings, self.work)}.json")


def write_json(path: Path, value) -> None:
    """Written beside and renamed: a killed run never leaves half a result."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def adopt_evaluations(plan: Plan) -> int:
    """File each evaluation of every earlier command's runs (work/plans/ holds their sizes) under
    its own key (`Plan.evaluation`), so that a command whose evaluations differ in one stage
    re-runs that stage only. Runs of another pretrained model are left alone. Returns the count."""
    fields = {"heldout_mlm": "curve", "probe": "probe", "sim": "relation_selection", "cluener": "cluener",
              "thucnews": "thucnews"}
    adopted = 0
    needed = {f for fields_, _ in EVALUATIONS.values() for f in fields_}
    for record in sorted((plan.work / "plans").glob("*.json")):
        size = json.loads(record.read_text())["size"]
        if not needed <= set(size):  # an older command's, made before a setting existed: its default may not be what ran
            continue
        earlier = Plan(Size(**size), plan.work, plan.kb)
        for variant in VARIANTS:
            for result_file in sorted(earlier.run_dir(variant, 0).parent.glob("seed-*/result.json")):
                seed = int(result_file.parent.name.removeprefix("seed-"))
                if earlier.pretrain_dir(variant, seed) != plan.pretrain_dir(variant, seed):
                    continue
                result = json.loads(result_file.read_text(encoding="utf-8"))
                for stage in EVALUATIONS:
                    target = earlier.evaluation(variant, seed, stage)
                    if not target.exists() and fields[stage] in result:
                        target.parent.mkdir(parents=True, exist_ok=True)
                        write_json(target, {"value": result[fields[stage]], "seconds": result["seconds"][stage],
                                             "cpu_seconds": result["cpu_seconds"][stage], "adopted_from": str(
                                                 result_file.relative_to(plan.work))})
                        adopted += 1
    return adopted
