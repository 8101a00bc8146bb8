"""The answering pipeline: question -> (entity, relation, tail) with evidence and a confidence.

    question ──universal (once)──┬─ NER head ──> mention spans ─┐
                                 │        linker.rank + link(spans) -> candidate entities
                                 │        (BM25 entity search when the linker finds none)
                                 │        store -> candidate relations of every candidate entity
                                 └─ + relation segments (cached question) -> SIM head -> score
    question ──GEN head, beam search constrained by the KB trie──> (head, relation) hits
    fusion: score = w_link·log p_link(entity) + w_ner·[in an NER mention] + w_sim·logit
                    + w_gen·p_gen(head, relation) + w_gen_head·p_gen(head)
                    + w_lex·lexical(question − mention, relation)
            confidence = softmax over the candidates.

`mode` picks the answering path: "fused" (both, the default), "pipeline" (linker + NER + SIM, no
GEN) or "gen" (GEN alone: the best trie-constrained (head, relation) and its tail), so each path's
share of the fused result is measured (`wenzhi evaluate --mode`). `distractor_relations` K makes
every entity also offer the KB's K most frequent relations with unknown tails (an empty tail, so
choosing one scores as wrong), for both paths: the official KB's many relations per head, here.
"""
from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


MODES = ("fused", "pipeline", "gen")
GEN_MEMO_SIZE = 50_000  # questions whose GEN hits are kept


@dataclass
class PipelineConfig:
    max_entities: int = 8  # candidate entities per question from the linker
    max_relations: int = 32  # relation segments per question row
    max_question_tokens: int = 64
    use_gen: bool = True
    gen_beams: int = 3
    gen_memo: int = GEN_MEMO_SIZE  # questions whose GEN hits are kept (0: decode every time)
    gen_cascade: bool = True  # fused: decode GEN only where it could change the answer (answer_batch)
    w_link: float = 1.0
    w_ner: float = 1.0
    w_sim: float = 1.0
    w_gen: float = 2.0
    w_gen_head: float = 0.0  # GEN's share of the head alone: its copy of the name stays right where a
    # relation it picks does not (among distractor relations, bench/RESULTS.md issue 12)
    w_len: float = 0.0  # per character of the entity's mention (a question's subject is usually long)
    w_lex: float = 0.0  # lexical rule (qa_service/lexical.py) of the candidate's relation
    mode: str = "fused"  # fused | pipeline | gen: which answering path decides
    all_evidence: bool = False  # every evidence term even at weight 0 (the fusion fit reads them all)
    distractor_relations: int = 0  # evaluation: every entity also offers the K most frequent relations
    no_answer_threshold: float = 0.0  # confidence under this -> no answer
    threads: int | None = None

    @classmethod
    def load(cls, model_dir: Path, **overrides) -> "PipelineConfig":
        path = Path(model_dir) / "pipeline.json"
        values = json.loads(path.read_text()) if path.exists() else {}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})


@dataclass
class Candidate:
    head: str
    relation: str
    tail: str
    entity_id: int
    score: float
    link: float
    sim: float | None
    gen: float
    mention: tuple[int, int] | None
    disambiguation: str | None = None
    confidence: float = 0.0  # softmax share of `score` among all candidates of the question
    ner: float = 0.0
    lex: float = 0.0
    gen_head: float = 0.0


def fused_score(c: Candidate, cfg: PipelineConfig) -> float:
    """The fusion: a linear score over the evidence of each candidate triple (weights in
    PipelineConfig, fitted by `wenzhi fit-fusion` on training questions)."""
    mention_chars = (c.mention[1] - c.mention[0]) if c.mention else 0
    if cfg.mode == "gen":
        return c.gen
    return (cfg.w_link * c.link + cfg.w_ner * c.ner + cfg.w_gen * c.gen + cfg.w_gen_head * c.gen_head
            + cfg.w_len * mention_chars
            + cfg.w_lex * c.lex + (cfg.w_sim * c.sim if c.sim is not None else -10.0))


@dataclass
class Answer:
    question: str
    triple: tuple[str, str, str] | None
    entity: str | None
    entity_id: int | None
    disambiguation: str | None
    mention: dict | None  # {"text", "start", "end"}
    confidence: float
    candidates: list[Candidate] = field(default_factory=list)
    ner_spans: list[tuple[int, int]] = field(default_factory=list)
    timings_ms: dict = field(default_factory=dict)

    @property
    def answer(self) -> str:
        return " ||| ".join(self.triple) if self.triple else ""


def _decode_bio(tags, offsets) -> list[tuple[int, int]]:
    """Character spans of B I* runs (an I without a B starts a span too)."""
    spans, cur = [], None
    for tag, (s, e) in zip(tags, offsets):
        if s == e:
            continue
        if tag == 1 or (tag == 2 and cur is None):
            if cur:
                spans.append(cur)
            cur = [s, e]
        elif tag == 2:
            cur[1] = e
        elif cur:
            spans.append(cur)
            cur = None
    if cur:
        spans.append(cur)
    return [tuple(x) for x in spans]


class QAPipeline:
    def __init__(self, model_dir: str | Path, kb: str | Path, config: PipelineConfig | None = None,
                 index: str | Path | None = None):
        import torch
        from wenzhi.kg import EntityLinker, TripleStore
        from wenzhi.model.modeling import (WenzhiForPrefixLM, WenzhiForSequencePairClassification,
                                    WenzhiForTokenClassification)

        from wenzhi.qa_service.heads import load_sim_head, load_tokenizer_for
        from wenzhi.qa_service.trie import ensure_trie, gen_layout
        from wenzhi.qa_service.packing import is_late

        self.model_dir = Path(model_dir)
        self.config = config or PipelineConfig.load(self.model_dir)
        if self.config.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {self.config.mode!r}")
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        for needed in ("sim", "ner"):
            if not (self.model_dir / needed / "config.json").exists():
                raise FileNotFoundError(f"{self.model_dir / needed}: fine-tuned {needed} head missing "
                                        f"(run `wenzhi finetune {needed} --output {self.model_dir}`)")
        self.tokenizer = load_tokenizer_for(self.model_dir / "sim")
        self.sim = load_sim_head(self.model_dir / "sim")
        self.ner = WenzhiForTokenClassification.from_pretrained(self.model_dir / "ner").eval()
        self.shared_universal = _same_universal(self.sim, self.ner)
        self.relation_states = None  # late SIM heads: what each relation contributes, computed once
        self.matching = not isinstance(self.sim, WenzhiForSequencePairClassification)
        if self.matching or is_late(self.sim):
            from wenzhi.qa_service.relation_prior import RelationPrior
            from wenzhi.qa_service.relation_states import relation_scorer

            prior = RelationPrior.load(self.model_dir / "sim") if self.matching else None
            self.relation_states = relation_scorer(self.sim, self.tokenizer, prior)
        if not self.shared_universal:
            log.warning("NER and SIM heads have different universal modules: running it per head")
        self.store = TripleStore(kb)
        if self.relation_states is not None:
            names = list(self.store.relation_names().values())
            if len(names) <= 100_000:  # a few thousand in practice: all of them now, not on first use
                with torch.inference_mode():
                    t0 = time.perf_counter()
                    self.relation_states.warm(names)
                    log.info("relation states for %d relations in %.1f s", len(names), time.perf_counter() - t0)
        # the feature table and compiled scorer loaded now: start-up memory, not the first requests'
        self.linker = EntityLinker(self.store).warm()
        self.gen = self.kb_trie = None
        self._gen_memo: dict = {}
        wants_gen = self.config.use_gen and self.config.mode != "pipeline"
        if self.config.mode == "gen" and not (self.config.use_gen and (self.model_dir / "gen" / "config.json").exists()):
            raise FileNotFoundError(f"{self.model_dir / 'gen'}: mode 'gen' needs the GEN head "
                                    f"(run `wenzhi finetune gen --output {self.model_dir}`)")
        if wants_gen and (self.model_dir / "gen" / "config.json").exists():
            self.gen = WenzhiForPrefixLM.from_pretrained(self.model_dir / "gen").eval()
            self.kb_trie = ensure_trie(self.model_dir / "gen", self.store, self.tokenizer, gen_layout(self.gen))
        self.reconfigure()
        self.retriever = None
        if index is not None:  # a tantivy directory or a cluster URL (retrieval/bm25.py)
            from wenzhi.retrieval.bm25 import open_bm25

            self.retriever = open_bm25(index)
        self._lock = threading.Lock()  # torch modules and the sqlite handle: one batch at a time

    # -- steps ------------------------------------------------------------------------------
    def _ner(self, enc, offsets) -> list[list[tuple[int, int]]]:
        from wenzhi.qa_service.packing import encode_questions

        if self.shared_universal and enc.packed is not None:  # the NLU layer over the packed rows too
            logits = enc.packed.unpack(self.ner.from_universal(enc.packed.universal).logits, enc.lengths)
        else:
            universal = enc.universal if self.shared_universal else encode_questions(
                self.ner, [ids[:n] for ids, n in zip(enc.input_ids.tolist(), enc.lengths)]).universal
            logits = self.ner.from_universal(universal).logits
        tags = logits.argmax(-1).tolist()
        return [_decode_bio(t[: len(o)], o) for t, o in zip(tags, offsets)]

    def _entities(self, question: str, spans) -> dict[int, dict]:
        """entity id -> {entity, link (log posterior), ner (posterior), mention}"""
        cands: dict[int, dict] = {}
        ranked = self.linker.rank(question, k=self.config.max_entities)
        if ranked:
            top = max(s for _, s, _ in ranked)
            z = sum(math.exp(s - top) for _, s, _ in ranked)
            for entity, score, mention in ranked:
                cands[entity.id] = {"entity": entity, "link": (score - top) - math.log(z), "ner": 0.0,
                                    "mention": (mention.start, mention.end)}
        if spans:
            for mention in self.linker.link(question, spans=spans):
                for entity, p in mention.candidates[: self.config.max_entities]:
                    c = cands.setdefault(entity.id, {"entity": entity, "link": math.log(1e-4), "ner": 0.0,
                                                     "mention": (mention.start, mention.end)})
                    c["ner"] = max(c["ner"], float(p))
                    c["mention"] = (mention.start, mention.end)
        if not cands and self.retriever is not None:  # fuzzy fallback: BM25 over entity names
            try:
                hits = self.retriever.search(question, k=self.config.max_entities, filters={"kind": "entity"})
            except Exception as exc:  # an unsearchable question (e.g. only punctuation)
                log.debug("BM25 fallback failed: %s", exc)
                hits = []
            for rank, hit in enumerate(hits):
                entity = self.store.entity(int(hit.fields.get("entity_id", -1)))
                if entity is not None:
                    cands[entity.id] = {"entity": entity, "link": math.log(0.5) - rank, "ner": 0.0, "mention": None}
        return cands

    def _gen(self, q_ids) -> list[dict[tuple[int, str], float]]:
        """Per question: (head id, relation) -> probability share among the returned beams.

        The GEN head's `generate` encodes the source itself (it takes token ids, not a
        UniversalOutput), so this is the one place the question passes the universal layers a
        second time; GEN is fine-tuned with the universal module unfrozen for that reason."""
        if self.gen is None:
            return [{} for _ in q_ids]
        # decoding is the pipeline's costliest step: a question asked again (or scored again in
        # another mode by `wenzhi evaluate`) reuses its hits
        keys = [(tuple(ids), self.config.distractor_relations, self.config.gen_beams) for ids in q_ids]
        todo = [i for i, key in enumerate(keys) if key not in self._gen_memo]
        fresh = dict(zip(todo, self._decode([q_ids[i] for i in todo]))) if todo else {}
        # read before evicting: a smaller gen_memo (reconfigure) may evict the hits this batch reuses
        out = [dict(fresh[i]) if i in fresh else dict(self._gen_memo[key]) for i, key in enumerate(keys)]
        for i, hits in fresh.items():
            self._gen_memo[keys[i]] = hits
        while len(self._gen_memo) > self.config.gen_memo:
            self._gen_memo.pop(next(iter(self._gen_memo)))
        return out

    def _decode(self, q_ids) -> list[dict[tuple[int, str], float]]:
        import torch

        from wenzhi.qa_service.heads import pad_rows

        ids = pad_rows(q_ids, self.tokenizer.pad_token_id)
        k = self.config.gen_beams
        result = self.gen.generate(ids, attention_mask=(ids != self.tokenizer.pad_token_id).long(),
                                   max_new_tokens=64, num_beams=k, num_return_sequences=k, renormalize=True,
                                   allowed_tokens_fn=lambda b, prefix: self.trie.allowed_next(prefix))
        out = []
        for seqs, scores in zip(result.sequences.tolist(), result.scores):
            probs = torch.softmax(scores.float(), dim=0).tolist() if torch.isfinite(scores).any() else []
            hits: dict[tuple[int, str], float] = {}
            for seq, p, s in zip(seqs, probs, scores.tolist()):
                if not math.isfinite(s):
                    continue
                if self.trie.sep_id in seq:  # [SEP] ends the trie key; padding follows
                    seq = seq[: seq.index(self.trie.sep_id) + 1]
                for hit in self.trie.lookup(seq):
                    hits[(hit.head_id, hit.relation)] = hits.get((hit.head_id, hit.relation), 0.0) + p
            out.append(hits)
        return out

    def answer_batch(self, questions: list[str], top_k: int = 5) -> list[Answer]:
        """Answer each question. With GEN weighed in fused mode and `gen_cascade` on, the pipeline's
        evidence answers first and GEN is decoded only for the questions where it could change the
        answer: GEN adds at most w_gen + w_gen_head to a candidate (both its terms are probability
        shares), so where the best candidate leads the next by more, the answer stands."""
        cfg = self.config
        top_k = max(1, top_k)
        cascade = (cfg.gen_cascade and cfg.mode == "fused" and not cfg.all_evidence and self.gen is not None
                   and (cfg.w_gen or cfg.w_gen_head))
        if not cascade:
            return self._answer_batch(questions, top_k, decode_gen=True)
        answers = self._answer_batch(questions, 10_000, decode_gen=False)
        close = [i for i, a in enumerate(answers) if not self._gen_cannot_overtake(a.candidates)]
        if close:
            for i, a in zip(close, self._answer_batch([questions[i] for i in close], top_k, decode_gen=True)):
                answers[i] = a
        for a in answers:
            del a.candidates[top_k:]
            a.timings_ms["gen_decoded_share"] = round(len(close) / max(1, len(questions)), 3)
        return answers

    def _gen_cannot_overtake(self, ranked: list[Candidate]) -> bool:
        """Whether GEN's terms could not put another candidate above the best one. A candidate of the
        best's (entity, relation) gets the same GEN terms (and stays behind it: the sort is stable);
        another relation of the same entity the same w_gen_head term."""
        if not ranked:
            return False  # GEN may find an entity the linker missed
        top, w_gen, w_head = ranked[0], abs(self.config.w_gen), abs(self.config.w_gen_head)
        for c in ranked[1:]:  # best first
            lead = top.score - c.score
            if lead > w_gen + w_head:
                return True  # nobody further down comes within reach either
            if (c.entity_id, c.relation) != (top.entity_id, top.relation) and lead <= w_gen + (
                    w_head if c.entity_id != top.entity_id else 0.0):
                return False
        return True

    def _answer_batch(self, questions: list[str], top_k: int, decode_gen: bool) -> list[Answer]:
        import torch

        from wenzhi.qa_service.lexical import lexical_score, strip_mention
        from wenzhi.qa_service.packing import encode_questions, encode_questions_packed, relation_segments, score_relations

        cfg = self.config
        with self._lock, torch.inference_mode():
            t0 = time.perf_counter()
            enc_tok = self.tokenizer(questions, max_length=cfg.max_question_tokens, truncation=True,
                                     return_offsets_mapping=True)
            q_ids = enc_tok["input_ids"]
            # the late route needs no per-layer caches of the question, so it can pack questions without
            # padding; worth it from a handful of questions (bench/qa_pipeline_speed.py)
            packed = self.relation_states is not None and len(questions) > 4
            encode = encode_questions_packed if packed else encode_questions
            enc = encode(self.sim, q_ids, self.tokenizer.pad_token_id)
            spans = self._ner(enc, enc_tok["offset_mapping"])
            t1 = time.perf_counter()
            # GEN decoding is ~95% of a fused answer's cost (bench/RESULTS.md, issue 12): skip it
            # where its evidence weighs nothing (a fusion fit may give it weight 0)
            gen_counts = decode_gen and (cfg.mode == "gen" or (cfg.mode == "fused" and (
                cfg.all_evidence or cfg.w_gen or cfg.w_gen_head)))
            gen_hits = self._gen(q_ids) if gen_counts else [{} for _ in questions]
            gen_heads = [{} for _ in questions]  # head id -> GEN's share over all its pairs
            for hits, heads in zip(gen_hits, gen_heads):
                for (head_id, _), p in hits.items():
                    heads[head_id] = heads.get(head_id, 0.0) + p
            t2 = time.perf_counter()
            per_q = []
            for qi, question in enumerate(questions):
                ents = self._entities(question, spans[qi])
                for (head_id, _), _p in gen_hits[qi].items():  # GEN may find an entity the linker missed
                    if head_id not in ents:
                        entity = self.store.entity(head_id)
                        if entity is not None:
                            ents[head_id] = {"entity": entity, "link": math.log(1e-4), "ner": 0.0, "mention": None}
                triples = []
                for c in ents.values():
                    triples.extend((c, t) for t in self.store.triples(c["entity"].id))
                relations = list(dict.fromkeys(t.relation for _, t in triples))[: cfg.max_relations]
                if self.distractors:
                    triples += self._distractor_triples(ents.values())
                    relations += [r for r in self.distractors if r not in relations]
                if cfg.mode == "gen":  # GEN alone decides: no relation needs a SIM score
                    relations = []
                per_q.append((ents, triples, relations))
            t3 = time.perf_counter()
            sims: list[dict[str, float]] = [{} for _ in questions]
            if any(rels for _, _, rels in per_q):
                if self.matching:  # the entity's name is not the relation's words: leave its mention out
                    mentions = [topic_mention(ents) or list(spans[qi]) for qi, (ents, _, _) in enumerate(per_q)]
                    logits = self.relation_states.score(enc, [rels for _, _, rels in per_q],
                                                        outside_spans(enc_tok["offset_mapping"], mentions)).tolist()
                elif self.relation_states is not None:
                    logits = self.relation_states.score(enc, [rels for _, _, rels in per_q]).tolist()
                else:
                    segments = [relation_segments(self.tokenizer, rels) for _, _, rels in per_q]
                    logits = score_relations(self.sim, enc, segments, self.tokenizer.pad_token_id).tolist()
                i = 0
                for qi, (_, _, rels) in enumerate(per_q):
                    for rel in rels:
                        sims[qi][rel] = logits[i]
                        i += 1
            t4 = time.perf_counter()
            answers = []
            for qi, question in enumerate(questions):
                ents, triples, _ = per_q[qi]
                cands = []
                for c, t in triples:
                    sim = sims[qi].get(t.relation)
                    gen = gen_hits[qi].get((c["entity"].id, t.relation), 0.0)
                    gen_head = gen_heads[qi].get(c["entity"].id, 0.0)
                    if cfg.mode == "gen" and gen == 0.0:
                        continue
                    cand = Candidate(t.head, t.relation, t.tail, c["entity"].id, 0.0, c["link"], sim, gen,
                                     c["mention"], c["entity"].disambiguation, ner=c["ner"], gen_head=gen_head)
                    if (cfg.w_lex or cfg.all_evidence) and cfg.mode != "gen":
                        cand.lex = lexical_score(strip_mention(question, c["mention"]), t.relation)
                    cand.score = fused_score(cand, cfg)
                    cands.append(cand)
                cands.sort(key=lambda c: -c.score)
                answers.append(self._answer(question, cands, ents, spans[qi], top_k))
            timings = {"encode_ner": (t1 - t0) * 1e3, "gen": (t2 - t1) * 1e3, "link_kb": (t3 - t2) * 1e3,
                       "sim": (t4 - t3) * 1e3, "total": (time.perf_counter() - t0) * 1e3}
            for a in answers:
                a.timings_ms = {k: round(v, 2) for k, v in timings.items()}
            return answers

    def reconfigure(self, **changes) -> None:
        """Change answering settings of a loaded pipeline (`wenzhi evaluate` scores several modes and
        distractor settings with one): the mode, weights, the distractor relations and their trie."""
        from dataclasses import replace

        self.config = replace(self.config, **changes)
        if self.config.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {self.config.mode!r}")
        if self.config.mode == "gen" and self.gen is None:
            raise ValueError("mode 'gen' needs the GEN head, which this pipeline did not load")
        self.distractors = [r for r, _ in self.store.relation_counts()[: self.config.distractor_relations]]
        self.trie = self.kb_trie
        if self.kb_trie is not None and self.distractors:
            from wenzhi.qa_service.trie import TrieWithDistractors

            self.trie = TrieWithDistractors(self.kb_trie, self.tokenizer, self.distractors)

    def _distractor_triples(self, entities) -> list:
        """(candidate, Triple with an empty tail) for each distractor relation an entity lacks."""
        from wenzhi.kg.store import Triple

        out = []
        for c in entities:
            entity = c["entity"]
            held = {t.relation for t in self.store.triples(entity.id)}
            out.extend((c, Triple(entity.name, r, "", entity.id)) for r in self.distractors if r not in held)
        return out

    def _answer(self, question, cands, ents, spans, top_k) -> Answer:
        if not cands:
            return Answer(question, None, None, None, None, None, 0.0, [], spans)
        top = cands[0].score
        z = sum(math.exp(c.score - top) for c in cands)
        for c in cands[:top_k]:
            c.confidence = math.exp(c.score - top) / z
        confidence = cands[0].confidence
        best = cands[0]
        entity = ents[best.entity_id]["entity"]
        mention = None
        if best.mention:
            s, e = best.mention
            mention = {"text": question[s:e], "start": s, "end": e}
        if confidence < self.config.no_answer_threshold:
            return Answer(question, None, None, None, None, None, confidence, cands[:top_k], spans)
        return Answer(question, (best.head, best.relation, best.tail), entity.name, entity.id,
                      entity.disambiguation, mention, confidence, cands[:top_k], spans)

    def answer(self, question: str, top_k: int = 5) -> Answer:
        return self.answer_batch([question], top_k)[0]

    # -- relation selection on its own -------------------------------------------------------
    def relation_scores(self, questions: list[str], relations: list[list[str]],
                        mentions: list[tuple[int, int] | None] | None = None) -> list[list[float]]:
        """SIM logits of each question's relations; a matching head leaves each question's entity
        `mentions` (character spans, e.g. the gold head's in evaluation) out of the match."""
        import torch

        from wenzhi.qa_service.packing import (encode_questions, packed_batch, relation_segments, sim_logits,
                                               universal_packed)

        with self._lock, torch.inference_mode():
            enc_tok = self.tokenizer(questions, max_length=self.config.max_question_tokens, truncation=True,
                                     return_offsets_mapping=True)
            q_ids = enc_tok["input_ids"]
            if self.matching:
                spans = [[m] if m else [] for m in (mentions or [None] * len(questions))]
                enc = encode_questions(self.sim, q_ids, self.tokenizer.pad_token_id)
                logits = self.relation_states.score(enc, relations, outside_spans(enc_tok["offset_mapping"], spans))
            else:
                batch = packed_batch(q_ids, [relation_segments(self.tokenizer, r) for r in relations],
                                     self.tokenizer.pad_token_id)
                logits = sim_logits(self.sim, self.sim.wenzhi.nlu(universal_packed(self.sim, batch)),
                                    batch.segment_starts)
            logits = logits.tolist()
        out, i = [], 0
        for rels in relations:
            out.append(logits[i : i + len(rels)])
            i += len(rels)
        return out

    def close(self) -> None:
        self.store.close()


def topic_mention(entities: dict) -> list[tuple[int, int]]:
    """The mention of the best-linked candidate entity (the linker's exact alias occurrence), if any."""
    linked = [c for c in entities.values() if c["mention"] is not None]
    return [tuple(max(linked, key=lambda c: c["link"])["mention"])] if linked else []


def outside_spans(offsets, spans):
    """bool [B, L]: True for tokens (by their character offsets) outside every span of their question."""
    import torch

    width = max((len(o) for o in offsets), default=1)
    mask = torch.ones(len(offsets), width, dtype=torch.bool)
    for b, (row, row_spans) in enumerate(zip(offsets, spans)):
        for i, (s, e) in enumerate(row):
            if any(s < span_e and e > span_s for span_s, span_e in row_spans):
                mask[b, i] = False
    return mask


def _same_universal(a, b) -> bool:
    import torch

    sa, sb = a.wenzhi.state_dict(), b.wenzhi.state_dict()
    keys = [k for k in sa if k.startswith(("embeddings.", "universal_layers."))]
    return all(k in sb and sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in keys)


def answer_to_dict(a: Answer) -> dict:
    d = asdict(a)
    d["answer"] = a.answer
    return d
