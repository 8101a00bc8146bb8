"""`wenzhi pretrain prepare --config FILE`: corpora + KB -> masked, packed shards with statistics.

Config (YAML or JSON; paths relative to the data directory unless absolute or relative to the
config file and existing there):

    output: /tmp/wenzhi-shards      # shard directory (written atomically)
    seq_len: 128                     # row length of the packed shards
    seed: 13
    tokenizer: null                  # vocab.txt / directory; null = BERT Chinese vocabulary
    kb: /tmp/kb.sqlite               # TripleStore (needed by entity, retrieval, uktp and linking)
    mask_ratio: 0.15
    heldout_fraction: 0.1            # probe triples kept out of pretraining (see model/probe.py)
    corpora:
      - {path: corpus/people_daily_1998_pos.txt, format: people_daily, limit: 2000}
      - {path: corpus/reviews_pos.txt, format: text}
      - {path: corpus/agrikg_distant_supervision.tsv, format: agrikg}         # use: triples
      - {path: kdconv, format: kdconv, use: both}                              # text + triples
    strategies: {char: 1, word: 2, phrase: 1, entity: 2, retrieval: 1, uktp: 1}
    curriculum: default              # or null (flat mix), or a list of stages:
    #  - {until: 0.3, seq_len: 64, strategies: {char: 1, word: 1}}
    #  - {until: 1.0, seq_len: 128, strategies: {word: 1, entity: 1, uktp: 1}}
    uktp: {relation: 0.5, triple_entity: 0.25, sentence_entity: 0.25}
    augment: {max_tokens: 96, min_tokens: 8}

Strategies for text: char / word (kind 0), phrase / entity (kind 1), retrieval (entity masking
plus a knowledge segment: kind 3, or kind 1 when nothing was found), uktp (pairs found by
linking the text against the KB: kind 2; entity masking when none). Triple corpora always give
UKTP examples (kind 2).

Determinism: every item gets its own generator seeded by (seed, corpus, item index), and the
corpora are interleaved in proportion to their sizes, so the output depends only on config.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wenzhi.model.conventions import IGNORE_INDEX, ExampleKind

TEXT_STRATEGIES = ("char", "word", "phrase", "entity", "retrieval", "uktp")
KIND_PLAIN, KIND_KNOWLEDGE, KIND_UKTP, KIND_RETRIEVAL = ExampleKind
_SENTENCE_END = set("。！？!?；;\n")


@dataclass
class CorpusSpec:
    path: str
    format: str
    use: str = ""  # text | triples | both (default: triples for agrikg, text otherwise)
    limit: int | None = None  # at most this many items (documents or pairs)
    skip: int = 0  # leave out the first items (e.g. a disjoint slice of the same corpus)
    text_field: str = "text"

    def __post_init__(self):
        if not self.use:
            self.use = "triples" if self.format == "agrikg" else "text"
        if self.use not in ("text", "triples", "both"):
            raise ValueError(f"corpus {self.path}: use must be text, triples or both, not {self.use!r}")


@dataclass
class PrepareConfig:
    output: str
    corpora: list[CorpusSpec]
    seq_len: int = 128
    seed: int = 0
    tokenizer: str | None = None
    kb: str | None = None
    mask_ratio: float = 0.15
    heldout_fraction: float = 0.1
    strategies: dict[str, float] = field(default_factory=lambda: {"word": 1.0})
    curriculum: object = None  # None | "default" | list of stage dicts
    uktp: dict[str, float] = field(default_factory=dict)
    augment: dict = field(default_factory=dict)
    rows_per_shard: int = 65536
    max_linked_pairs: int = 2  # UKTP examples per text chunk from linking
    # a tantivy BM25 index (`wenzhi index bm25 --kind passages --out DIR`) whose passages can
    # serve as the knowledge segment (augment.sources says in which order of preference)
    retrieval_index: str | None = None
    base_dir: str = "."

    @classmethod
    def from_dict(cls, raw: dict, base_dir: Path = Path(".")) -> "PrepareConfig":
        raw = dict(raw)
        known = set(cls.__dataclass_fields__)
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}; known: {sorted(known - {'base_dir'})}")
        for key in ("output", "corpora"):
            if key not in raw:
                raise ValueError(f"config needs {key!r}")
        raw["corpora"] = [CorpusSpec(**c) for c in raw["corpora"]]
        cfg = cls(**raw, base_dir=str(base_dir)) if "base_dir" not in raw else cls(**raw)
        bad = set(cfg.strategies) - set(TEXT_STRATEGIES)
        if bad:
            raise ValueError(f"unknown strategies {sorted(bad)}; choose from {TEXT_STRATEGIES}")
        if cfg.seq_len < 16:
            raise ValueError("seq_len must be at least 16")
        return cfg

    def resolve(self, path: str | None) -> Path | None:
        """Absolute paths as given; else relative to the config file, or to the working directory
        (command-line overrides), if it exists there; else inside the data directory (a clear
        error if missing)."""
        if path is None:
            return None
        p = Path(path).expanduser()
        if p.is_absolute():
            return p
        for local in (Path(self.base_dir) / p, Path.cwd() / p):
            if local.exists():
                return local
        from wenzhi.kg.datadir import data_path

        return data_path(str(p))


def load_config(path: str | Path) -> PrepareConfig:
    """A config file, or a shipped one by name (`prepare_tiny`: model/config_files.py)."""
    from wenzhi.model.config_files import find_config

    path, base_dir = find_config(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        raw = yaml.safe_load(text)
    else:
        raw = json.loads(text)
    return PrepareConfig.from_dict(raw, base_dir=base_dir)


# -- items: a stream per corpus, interleaved ------------------------------------------------------
def _corpus_items(spec: CorpusSpec, path: Path):
    """('doc', Document), ('pair', TripleSentence) and ('dialogue', ...) items of one corpus, in
    file order, after `skip`, at most `limit`."""
    from itertools import islice

    yield from islice(_all_corpus_items(spec, path), spec.skip, None if spec.limit is None else spec.skip + spec.limit)


def _all_corpus_items(spec: CorpusSpec, path: Path):
    from wenzhi.model.corpora import Document, kdconv_pairs_of_dialogue, read_documents, read_kdconv_dialogues, read_triple_sentences

    if spec.format == "kdconv" and spec.use in ("text", "both"):
        # dialogues and their grounded pairs together, so a held-out fact can leave the text too
        for turns in read_kdconv_dialogues(path):
            pairs = list(kdconv_pairs_of_dialogue(turns)) if spec.use == "both" else []
            yield "dialogue", (Document("\n".join(t.text for t in turns if t.text), "kdconv"), pairs, turns)
        return
    streams = []
    if spec.use in ("triples", "both"):
        streams.append(("pair", read_triple_sentences(path, spec.format)))
    if spec.use in ("text", "both"):
        streams.append(("doc", read_documents(path, spec.format, spec.text_field)))
    for tag, stream in streams:
        for item in stream:
            yield tag, item


def _count(spec: CorpusSpec, path: Path) -> int:
    return sum(1 for _ in _corpus_items(spec, path))


def interleave(streams: list, totals: list[int]):
    """Yield (stream index, item index, item), always from the stream furthest behind its share,
    so every stretch of the output mixes all corpora (the curriculum then sees them all)."""
    iters = [iter(s) for s in streams]
    done = [0] * len(streams)
    live = [i for i, t in enumerate(totals) if t > 0]
    while live:
        i = min(live, key=lambda j: (done[j] / totals[j], j))
        try:
            item = next(iters[i])
        except StopIteration:
            live.remove(i)
            continue
        yield i, done[i], item
        done[i] += 1


# -- the preparer --------------------------------------------------------------------------------
class Preparer:
    """Turns items into PackedExamples and keeps the statistics."""

    def __init__(self, cfg: PrepareConfig, tokenizer, store=None, linker=None, retriever=None):
        from wenzhi.model.augment import AugmentConfig, KnowledgeAugmenter
        from wenzhi.model.knowledge_masking import Curriculum, EntityMasker, PhraseMasker
        from wenzhi.model.masking import CharMasker, WholeWordMasker
        from wenzhi.model.uktp import UKTPConfig, heldout_triple

        self.cfg, self.tokenizer, self.store, self.linker = cfg, tokenizer, store, linker
        needs_kb = {"entity", "retrieval", "uktp"}
        if cfg.curriculum is None:
            self.curriculum = Curriculum.from_config([{"until": 1.0, "strategies": cfg.strategies}], cfg.seq_len)
        elif cfg.curriculum == "default":
            self.curriculum = Curriculum.default(cfg.seq_len, cfg.strategies)
        else:
            self.curriculum = Curriculum.from_config(list(cfg.curriculum), cfg.seq_len)
        for stage in self.curriculum.stages:
            if stage.max_len > cfg.seq_len:
                raise ValueError(f"curriculum stage seq_len {stage.max_len} exceeds seq_len {cfg.seq_len}")
            used = {k for k, w in stage.weights.items() if w > 0}
            if used & {"retrieval", "uktp"} and store is None:
                raise ValueError(f"strategies {sorted(used & needs_kb)} need a KB store (config key 'kb')")
            bad = set(stage.weights) - set(TEXT_STRATEGIES)
            if bad:
                raise ValueError(f"unknown strategies {sorted(bad)} in the curriculum")
        self.maskers = {"char": CharMasker(), "word": WholeWordMasker(), "phrase": PhraseMasker(),
                        "entity": EntityMasker(linker), "retrieval": EntityMasker(linker)}
        self.uktp_config = UKTPConfig(**cfg.uktp) if cfg.uktp else UKTPConfig()
        frac = cfg.heldout_fraction
        self.is_heldout = lambda h, r, t: heldout_triple(h, r, t, frac)
        self.augmenter = (KnowledgeAugmenter(store, tokenizer, retriever, AugmentConfig(**cfg.augment),
                                             exclude_triple=self.is_heldout) if store is not None else None)
        self.special_ids = set(tokenizer.all_special_ids)
        self.stats = {
            "items": 0, "documents": 0, "chunks": 0, "pairs": 0, "examples": 0, "tokens": 0,
            "masked_tokens": 0, "unk_tokens": 0, "heldout_pairs_excluded": 0, "heldout_turns_removed": 0,
            "pairs_unencodable": 0, "uktp_fallback_to_entity": 0,
            "examples_per_strategy": Counter(), "examples_per_kind": Counter(),
            "masked_tokens_per_unit": Counter(), "masked_tokens_per_kind": Counter(),
            "tokens_per_kind": Counter(), "uktp_modes": Counter(), "uktp_sources": Counter(),
            "examples_per_stage": Counter(), "documents_per_corpus": Counter(),
        }

    # -- helpers ------------------------------------------------------------------------------
    def _emit(self, out: list, ids, labels, types, kind: int, strategy: str, spans, stage: int):
        from wenzhi.model.shards import PackedExample

        ids = np.asarray(ids, np.int32)
        labels = np.asarray(labels, np.int32)
        masked = int((labels != IGNORE_INDEX).sum())
        s = self.stats
        s["examples"] += 1
        s["tokens"] += len(ids)
        s["masked_tokens"] += masked
        s["examples_per_strategy"][strategy] += 1
        s["examples_per_kind"][str(kind)] += 1
        s["masked_tokens_per_kind"][str(kind)] += masked
        s["tokens_per_kind"][str(kind)] += len(ids)
        s["examples_per_stage"][str(stage)] += 1
        for span in spans:
            # count only positions actually labelled (apply_masks skips specials)
            s["masked_tokens_per_unit"][getattr(span, "kind", "token")] += int((labels[span[0]:span[1]] != IGNORE_INDEX).sum())
        out.append(PackedExample(ids, labels, np.asarray(types, np.int8), kind))

    def _chunks(self, text: str, max_tokens: int):
        """Token ranges of the document of at most max_tokens, cut after a sentence end where
        one falls in the second half of the chunk, never inside a word's WordPieces."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        tokens = self.tokenizer.convert_ids_to_tokens(ids)
        start, n = 0, len(ids)
        while start < n:
            end = min(start + max_tokens, n)
            if end < n:
                cut = end
                for j in range(end, start + max_tokens // 2, -1):
                    if text[offsets[j - 1][1] - 1: offsets[j - 1][1]] in _SENTENCE_END:
                        cut = j
                        break
                while cut > start + 1 and tokens[cut].startswith("##"):
                    cut -= 1
                end = cut
            yield ids[start:end], offsets[start:end]
            start = end

    def _example(self, doc, chunk_ids, chunk_offsets):
        """[CLS] chunk [SEP] as a MaskingExample with offsets relative to the chunk text."""
        from wenzhi.model.masking import MaskingExample

        c0, c1 = chunk_offsets[0][0], chunk_offsets[-1][1]
        offsets = [(0, 0)] + [(a - c0, b - c0) for a, b in chunk_offsets] + [(0, 0)]
        ids = [self.tokenizer.cls_token_id] + list(chunk_ids) + [self.tokenizer.sep_token_id]
        pos = None
        if doc.words is not None:
            pos = [(a - c0, b - c0, t) for a, b, t in doc.words if a >= c0 and b <= c1]
        return MaskingExample(text=doc.text[c0:c1], input_ids=ids, offsets=offsets, pos_words=pos,
                              special_mask=[True] + [False] * len(chunk_ids) + [True])

    # -- items --------------------------------------------------------------------------------
    def document(self, doc, rng, progress: float, out: list) -> None:
        from wenzhi.model.masking import apply_masks, mask_budget

        stage_index = self.curriculum.index_at(progress)
        stage = self.curriculum.stages[stage_index]
        names = [k for k, w in stage.weights.items() if w > 0]
        probs = np.array([stage.weights[k] for k in names], float)
        strategy = names[int(rng.choice(len(names), p=probs / probs.sum()))]
        self.stats["documents"] += 1
        self.stats["documents_per_corpus"][doc.source] += 1
        limit = stage.max_len - 2
        if strategy == "retrieval":  # leave room for the knowledge segment
            limit = max(8, limit - min(self.augmenter.config.max_tokens + 1, limit // 2))
        for chunk_ids, chunk_offsets in self._chunks(doc.text, limit):
            self.stats["chunks"] += 1
            self.stats["unk_tokens"] += sum(1 for i in chunk_ids if i == self.tokenizer.unk_token_id)
            ex = self._example(doc, chunk_ids, chunk_offsets)
            if strategy == "uktp" and self._linked_uktp(ex.text, rng, stage.max_len, stage_index, out):
                continue
            used = "entity" if strategy == "uktp" else strategy
            if strategy == "uktp":
                self.stats["uktp_fallback_to_entity"] += 1
            spans = self.maskers[used].select_spans(ex, rng, mask_budget(ex.num_maskable, self.cfg.mask_ratio))
            ids, labels = apply_masks(ex.input_ids, spans, rng, self.tokenizer, ex.special_mask)
            types = np.zeros(len(ids), np.int8)
            kind = KIND_PLAIN if used in ("char", "word") else KIND_KNOWLEDGE
            if used == "retrieval":
                entity_ids = [ex.entity_ids[k] for k in self._masked_entity_keys(ex, spans)]
                ids, labels, types, sources = self.augmenter.augment(ids, labels, types, entity_ids, stage.max_len)
                if sources:
                    kind = KIND_RETRIEVAL
            self._emit(out, ids, labels, types, kind, used, spans, stage_index)

    @staticmethod
    def _masked_entity_keys(ex, spans) -> list[tuple[int, int]]:
        """Char spans of masked entity units that the linker tied to a KB entity."""
        keys = []
        for span in spans:
            if getattr(span, "kind", "") != "entity":
                continue
            s, e = span
            a, b = ex.offsets[s][0], ex.offsets[e - 1][1]
            for key in ex.entity_ids:  # unit may be wider than the mention (WordPiece edges)
                if a <= key[0] and key[1] <= b:
                    keys.append(key)
        return keys

    def _linked_uktp(self, text, rng, max_len, stage_index, out) -> bool:
        from wenzhi.model.uktp import linked_pairs

        if self.linker is None:
            return False
        pairs = [p for p in linked_pairs(text, self.linker, self.store)
                 if not self.is_heldout(p.head, p.relation, p.tail)]
        if not pairs:
            return False
        emitted = False
        for i in rng.permutation(len(pairs))[: self.cfg.max_linked_pairs]:
            emitted |= self.pair(pairs[int(i)], rng, max_len, stage_index, out)
        return emitted

    def pair(self, pair, rng, max_len: int, stage_index: int, out: list) -> bool:
        from wenzhi.model.uktp import build_uktp_example

        self.stats["pairs"] += 1
        if self.is_heldout(pair.head, pair.relation, pair.tail):
            self.stats["heldout_pairs_excluded"] += 1
            return False
        ex = build_uktp_example(pair, self.tokenizer, rng, max_len, self.uktp_config)
        if ex is None:
            self.stats["pairs_unencodable"] += 1
            return False
        self.stats["uktp_modes"][ex.mode] += 1
        self.stats["uktp_sources"][pair.source] += 1
        self._emit(out, ex.input_ids, ex.labels, ex.token_type_ids, KIND_UKTP, "uktp", ex.spans, stage_index)
        return True

    def item(self, tag: str, item, rng, progress: float) -> list:
        out: list = []
        self.stats["items"] += 1
        stage_index = self.curriculum.index_at(progress)
        max_len = self.curriculum.stages[stage_index].max_len
        if tag == "doc":
            self.document(item, rng, progress, out)
        elif tag == "pair":
            self.pair(item, rng, max_len, stage_index, out)
        elif tag == "dialogue":
            doc, pairs, turns = item
            keep, dropped = [], 0
            for turn in turns:
                if any(self.is_heldout(p.head, p.relation, p.tail) for p in pairs if p.sentence == turn.text):
                    dropped += 1
                elif turn.text:
                    keep.append(turn.text)
            self.stats["heldout_turns_removed"] += dropped
            if keep:
                doc.text = "\n".join(keep)
                self.document(doc, rng, progress, out)
            for p in pairs:
                self.pair(p, rng, max_len, stage_index, out)
        return out

    def summary(self, augment_stats: dict | None) -> dict:
        s = {k: (dict(v) if isinstance(v, Counter) else v) for k, v in self.stats.items()}
        if augment_stats is not None:
            s["augmentation"] = augment_stats
        return s


def prepare(cfg: PrepareConfig, show_progress: bool = True, retriever=None, overwrite: bool = True) -> dict:
    """Run the whole preparation; returns the shard meta (with statistics)."""
    from tqdm import tqdm

    from wenzhi.model.shards import ShardWriter
    from wenzhi.model.tokenizer import load_tokenizer

    started = time.perf_counter()
    tokenizer = load_tokenizer(cfg.resolve(cfg.tokenizer) if cfg.tokenizer else None)
    store = linker = None
    if cfg.kb:
        from wenzhi.kg import EntityLinker, TripleStore

        kb_path = cfg.resolve(cfg.kb)
        if not kb_path.exists():
            raise FileNotFoundError(f"KB store {kb_path} not found: create it with `wenzhi kg import`")
        store = TripleStore(kb_path)
        linker = EntityLinker(store)
    if retriever is None and cfg.retrieval_index:
        from wenzhi.retrieval import TantivyRetriever

        retriever = TantivyRetriever(cfg.resolve(cfg.retrieval_index))
    paths = [cfg.resolve(c.path) for c in cfg.corpora]
    totals = [_count(c, p) for c, p in zip(cfg.corpora, paths)]
    grand_total = sum(totals)
    preparer = Preparer(cfg, tokenizer, store, linker, retriever)
    streams = [_corpus_items(c, p) for c, p in zip(cfg.corpora, paths)]
    chars = 0
    writer = ShardWriter(cfg.output, cfg.seq_len, len(tokenizer), tokenizer=str(tokenizer.name_or_path),
                         rows_per_shard=cfg.rows_per_shard, overflow="error", overwrite=overwrite)
    try:
        with tqdm(total=grand_total, desc="prepare", unit="item", disable=not show_progress, file=sys.stderr) as bar:
            for position, (corpus_index, item_index, (tag, item)) in enumerate(interleave(streams, totals)):
                rng = np.random.default_rng([cfg.seed, corpus_index, item_index])
                chars += _item_chars(tag, item)
                for example in preparer.item(tag, item, rng, position / max(grand_total, 1)):
                    writer.add(example)
                bar.update(1)
        elapsed = time.perf_counter() - started
        stats = preparer.summary(preparer.augmenter.stats.as_dict() if preparer.augmenter else None)
        stats.update({"chars": chars, "seconds": round(elapsed, 2),
                      "chars_per_second": round(chars / elapsed, 1) if elapsed else 0.0})
        meta = writer.close(extra_stats={"prepare": stats},
                            extra_meta={"seed": cfg.seed, "heldout_fraction": cfg.heldout_fraction,
                                        "curriculum": [{"until": s.until, "seq_len": s.max_len, "strategies": s.weights}
                                                       for s in preparer.curriculum.stages],
                                        "corpora": [{"path": str(p), "format": c.format, "use": c.use, "items": t}
                                                    for c, p, t in zip(cfg.corpora, paths, totals)]})
    except BaseException:
        writer.abort()
        raise
    finally:
        if store is not None:
            store.close()
    return meta


def _item_chars(tag, item) -> int:
    if tag == "doc":
        return len(item.text)
    if tag == "pair":
        return len(item.sentence)
    return len(item[0].text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML or JSON prepare config, or a shipped one by name (prepare_tiny, prepare_full)")
    parser.add_argument("--output", help="override the config's output directory")
    parser.add_argument("--seed", type=int, help="override the config's seed")
    parser.add_argument("--kb", help="override the config's KB store")
    parser.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
    except (OSError, ValueError, TypeError) as exc:
        print(f"error: {args.config}: {exc}", file=sys.stderr)
        return 2
    for key in ("output", "seed", "kb"):
        if getattr(args, key, None) is not None:
            setattr(cfg, key, getattr(args, key))
    try:
        meta = prepare(cfg, show_progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stats = meta["stats"]["prepare"]
    summary = {"output": cfg.output, "rows": meta["num_sequences"], "seq_len": meta["seq_len"],
               "documents": stats["documents"], "examples": stats["examples"], "tokens": stats["tokens"],
               "masked_tokens": stats["masked_tokens"], "examples_per_strategy": stats["examples_per_strategy"],
               "examples_per_kind": stats["examples_per_kind"],
               "masked_tokens_per_unit": stats["masked_tokens_per_unit"],
               "augmentation_hit_rate": stats.get("augmentation", {}).get("hit_rate"),
               "padding_fraction": meta["stats"]["padding_fraction"], "chars": stats["chars"],
               "seconds": stats["seconds"], "chars_per_second": stats["chars_per_second"]}
    print(json.dumps(summary, ensure_ascii=False))
    return 0
