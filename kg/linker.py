"""EntityLinker: find KB entity mentions in raw Chinese text and pick the entity each one means.

1. Mention detection: every alias occurrence in the normalised text (Aho-Corasick), then the
   longest non-overlapping ones; or, when a model supplies NER spans, exactly those spans.
2. Candidates: the alias's entities with their prior p(entity | alias).
3. Disambiguation: a linear score over evidence features (`FEATURES`): the prior, and the
   overlap between the text around the mention and what the KB says about each candidate
   (its relation names, short tails, disambiguation and description). Relation names are the
   strongest cue in questions, which paraphrase the relation they ask about
   (刘晓华主要讲什么课 -> 主讲课程). Character overlap rather than word overlap: Chinese
   paraphrases share characters, not segmented words, and it needs no segmenter. No library
   implements this for a bare triple store, hence hand-written; the weights were fitted on
   KgCLUE *train* questions (softmax over each question's candidates) and checked on KgCLUE
   dev and NLPCC 2016, see bench/RESULTS.md.
4. NIL: a mention whose best candidate's posterior falls under `nil_threshold` links to nothing.
"""
from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache

from kg.alias_index import AliasIndex
from kg.names import normalize, normalize_with_offsets
from kg.store import Entity, TripleStore

FEATURES = (
    "relation_cover",     # max over relations: fraction of its characters in the context
    "relation_hits",      # max over relations: characters in the context (capped at 4) / 4
    "relation_bigrams",   # max over relations: fraction of its bigrams in the context
    "tail_cover",         # max over short tails: fraction of characters in the context
    "disambiguation",     # fraction of the disambiguation's characters in the context
    "description",        # fraction of the context's bigrams found in the description
    "log_prior",          # log p(entity | alias)
    "log_triples",        # log(1 + number of triples): how well the KB knows the entity
    "mention_length",     # characters, capped at 12, / 12
    "single_char",        # 1-character mention
    "no_word_char",       # mention has no letter, digit or CJK character ('？')
    "full_name",          # the mention is the full name with its disambiguation
    "alias_only",         # matched through an alias relation, not the entity's own name
    "text_frequency",     # log(1 + occurrences of the alias per million characters of ordinary text)
)


@dataclass
class Mention:
    text: str
    start: int  # character offsets into the ORIGINAL text, end exclusive
    end: int
    entity: Entity | None  # None = NIL
    score: float
    candidates: list[tuple[Entity, float]] = field(default_factory=list)  # ranked, best first

    def to_dict(self) -> dict:
        return {
            "mention": self.text,
            "start": self.start,
            "end": self.end,
            "entity": self.entity.name if self.entity else None,
            "entity_id": self.entity.id if self.entity else None,
            "score": round(self.score, 4),
            "candidates": [[e.name, round(s, 4)] for e, s in self.candidates],
        }


# One weight per FEATURES entry, fitted on the 18,000 KgCLUE *train* questions against the
# merged KB: `wenzhi kg fit-linker --db kb.sqlite --questions kgclue/train.json`.
DEFAULT_WEIGHTS = (2.623, 1.246, 1.854, -0.252, 0.244, -0.003, -0.242, 0.0, 3.123, -0.679, -0.018, -0.009,
                   -0.905, -1.405)


@dataclass
class LinkerConfig:
    single_char_mentions: bool = False  # `link`: 1-character aliases (汉字 entries) only via NER spans
    max_candidates: int = 30  # homonym groups can be large (张伟 ...); keep the top by prior
    context: bool = True  # False: prior only (longest match + most frequent homonym)
    context_window: int = 64  # characters each side of the mention used as context
    weights: tuple[float, ...] = DEFAULT_WEIGHTS
    nil_threshold: float = 0.05
    max_triples: int = 300  # per entity, for context features


@dataclass(frozen=True)
class _EntityFeatures:
    relations: tuple[frozenset, ...]
    relation_bigrams: tuple[frozenset, ...]
    tails: tuple[frozenset, ...]
    disambiguation: frozenset
    description: frozenset  # character bigrams
    base: str  # normalised
    full: str  # normalised full name
    log_triples: float
    # unions of the groups above: most candidates share nothing with the context, and one
    # intersection with the union proves it without scanning every relation and tail
    relation_chars: frozenset = frozenset()
    relation_grams: frozenset = frozenset()
    tail_chars: frozenset = frozenset()


def _bigrams(text: str) -> set[str]:
    return {text[i : i + 2] for i in range(len(text) - 1)}


def _best_cover(groups, chars) -> float:
    """Largest fraction of one group's members present in `chars`."""
    best = 0.0
    for g in groups:
        if g:
            f = len(g & chars) / len(g)
            if f > best:
                best = f
    return best


def _has_word_char(text: str) -> bool:
    return any(unicodedata.category(c)[0] in "LN" for c in text)


class EntityLinker:
    def __init__(self, store: TripleStore, alias_index: AliasIndex | None = None,
                 config: LinkerConfig | None = None, progress: bool = False):
        self.store = store
        self.index = alias_index if alias_index is not None else AliasIndex.for_store(store, progress=progress)
        self.config = config or LinkerConfig()
        if len(self.config.weights) != len(FEATURES):
            raise ValueError(f"weights has {len(self.config.weights)} entries, FEATURES {len(FEATURES)}")
        self._entity = lru_cache(maxsize=200_000)(store.entity)
        self._entity_features = lru_cache(maxsize=200_000)(self._compute_entity_features)

    # -- public ---------------------------------------------------------------------------
    def link(self, text: str, spans: list[tuple[int, int]] | None = None) -> list[Mention]:
        """Mentions in `text`, in text order. `spans`: optional NER (start, end) character spans
        into `text`; when given, only those spans are linked."""
        if not text or not text.strip():
            return []
        norm, offmap = normalize_with_offsets(text)
        to_orig = (lambda i: i) if offmap is None else offmap.__getitem__
        found = self._spans_from_ner(text, norm, offmap, spans) if spans is not None else self._detect(norm)
        mentions = []
        for s, e, key_id in found:
            o_start, o_end = to_orig(s), to_orig(e - 1) + 1
            mentions.append(self._disambiguate(text, norm, s, e, key_id, o_start, o_end))
        return mentions

    def rank(self, text: str, k: int = 5) -> list[tuple[Entity, float, Mention]]:
        """The entities `text` is most likely about, best first: KBQA topic-entity selection.

        Unlike `link`, every alias occurrence competes (overlapping ones and 1-character
        entries too), each candidate scored with the same features, in which the mention's
        length now matters (a question's subject is usually its longest KB name)."""
        if not text or not text.strip():
            return []
        cfg = self.config
        norm, offmap = normalize_with_offsets(text)
        to_orig = (lambda i: i) if offmap is None else offmap.__getitem__
        scored = []
        for s, e, key_id in set(self.index.matches(norm, single_chars=True)):
            cands = self.index.key_candidates(key_id)[: cfg.max_candidates]
            if cfg.context:
                raw = self._scores(norm, s, e, key_id, cands)
            else:  # the baseline: longest match first, then the most frequent homonym
                raw = [100.0 * (e - s) + math.log(max(p, 1e-9)) for _, p in cands]
            o_start, o_end = to_orig(s), to_orig(e - 1) + 1
            for (eid, _), r in zip(cands, raw):
                scored.append((r, eid, o_start, o_end))
        scored.sort(key=lambda x: -x[0])
        seen, out = set(), []
        for score, eid, o_start, o_end in scored:
            if eid in seen:
                continue
            seen.add(eid)
            entity = self._entity(eid)
            mention = Mention(text[o_start:o_end], o_start, o_end, entity, score, [(entity, score)])
            out.append((entity, score, mention))
            if len(out) == k:
                break
        return out

    def candidate_ids(self, text: str) -> set[int]:
        """Every candidate entity of every alias occurrence (what `rank` chooses from)."""
        norm, _ = normalize_with_offsets(text)
        out: set[int] = set()
        for _, _, key_id in self.index.matches(norm, single_chars=True):
            out.update(eid for eid, _ in self.index.key_candidates(key_id)[: self.config.max_candidates])
        return out

    def feature_rows(self, text: str) -> list[tuple[int, list[float]]]:
        """(entity id, feature vector) for every candidate of every alias occurrence, as `rank`
        sees them: what the weights are fitted on."""
        norm, _ = normalize_with_offsets(text)
        rows = []
        for s, e, key_id in set(self.index.matches(norm, single_chars=True)):
            ctx = self._context(norm, s, e)
            for eid, prior in self.index.key_candidates(key_id)[: self.config.max_candidates]:
                rows.append((eid, self._feature_vector(norm, s, e, key_id, ctx, eid, prior)))
        return rows

    # -- mention detection ----------------------------------------------------------------
    def _detect(self, norm: str) -> list[tuple[int, int, int]]:
        found = list(self.index.matches(norm, single_chars=self.config.single_char_mentions))
        if not found:
            return []
        found.sort(key=lambda m: (m[0] - m[1], m[0]))  # longest first, then leftmost
        taken = bytearray(len(norm))
        chosen = []
        for s, e, key_id in found:
            if taken.find(1, s, e) == -1:
                taken[s:e] = b"\x01" * (e - s)
                chosen.append((s, e, key_id))
        chosen.sort()
        return chosen

    def _spans_from_ner(self, text, norm, offmap, spans) -> list[tuple[int, int, int]]:
        """Map NER spans onto the normalised text; use the span's own alias, else the longest
        alias inside it, else report it with no candidates (key -1)."""
        orig_to_norm = list(range(len(text) + 1)) if offmap is None else _inverse_map(offmap, len(text))
        out = []
        for start, end in spans:
            start, end = max(0, start), min(len(text), end)
            if start >= end:
                continue
            s, e = orig_to_norm[start], orig_to_norm[end]
            if s >= e:
                continue
            key_id = self.index.key_id(norm[s:e], normalized=True)
            if key_id is not None:
                out.append((s, e, key_id))
                continue
            inner = sorted(self.index.matches(norm[s:e], single_chars=True),
                           key=lambda m: (m[0] - m[1], m[0]))
            if inner:
                ms, me, k = inner[0]
                out.append((s + ms, s + me, k))
            else:
                out.append((s, e, -1))
        return out

    # -- disambiguation -------------------------------------------------------------------
    def _disambiguate(self, text, norm, s, e, key_id, o_start, o_end) -> Mention:
        cfg = self.config
        surface = text[o_start:o_end]
        cands = self.index.key_candidates(key_id)[: cfg.max_candidates] if key_id >= 0 else []
        if not cands:
            return Mention(surface, o_start, o_end, None, 0.0, [])
        if len(cands) == 1:  # the common case in running text: nothing to weigh
            entity = self._entity(cands[0][0])
            return Mention(surface, o_start, o_end, entity, 1.0, [(entity, 1.0)])
        if cfg.context:
            raw = self._scores(norm, s, e, key_id, cands)
        else:  # the baseline: the prior decides
            raw = [math.log(max(p, 1e-9)) for _, p in cands]
        top = max(raw)
        exp = [math.exp(r - top) for r in raw]
        z = sum(exp)
        ranked = sorted(
            ((self._entity(eid), x / z) for (eid, _), x in zip(cands, exp)), key=lambda c: -c[1]
        )
        ranked = [(ent, p) for ent, p in ranked if ent is not None]
        best, score = ranked[0]
        if score < cfg.nil_threshold:
            best = None
        return Mention(surface, o_start, o_end, best, score, ranked)

    def _scores(self, norm, s, e, key_id, cands) -> list[float]:
        w = self.config.weights
        ctx = self._context(norm, s, e)
        return [
            sum(a * b for a, b in zip(w, self._feature_vector(norm, s, e, key_id, ctx, eid, p)))
            for eid, p in cands
        ]

    def _context(self, norm: str, s: int, e: int) -> tuple[frozenset, set]:
        """Characters and bigrams around the mention (the mention itself left out)."""
        w = self.config.context_window
        context = norm[max(0, s - w) : s] + "\x00" + norm[e : e + w]
        return frozenset(context), _bigrams(context)

    def _feature_vector(self, norm: str, s: int, e: int, key_id: int, ctx, entity_id: int,
                        prior: float) -> list[float]:
        chars, grams = ctx
        f = self._entity_features(entity_id)
        mention = norm[s:e]
        best_hits = 0
        rel_cover = rel_gram_cover = tail_cover = 0.0
        if not f.relation_chars.isdisjoint(chars):
            for r in f.relations:
                hits = len(r & chars)
                if hits > best_hits:
                    best_hits = hits
            rel_cover = _best_cover(f.relations, chars)
            if not f.relation_grams.isdisjoint(grams):
                rel_gram_cover = _best_cover(f.relation_bigrams, grams)
        if not f.tail_chars.isdisjoint(chars):
            tail_cover = _best_cover(f.tails, chars)
        return [
            rel_cover,
            min(best_hits, 4) / 4.0,
            rel_gram_cover,
            tail_cover,
            len(f.disambiguation & chars) / len(f.disambiguation) if f.disambiguation else 0.0,
            len(f.description & grams) / len(grams) if f.description and grams else 0.0,
            math.log(max(prior, 1e-9)),
            f.log_triples,
            min(e - s, 12) / 12.0,
            float(e - s == 1),
            float(not _has_word_char(mention)),
            float(mention == f.full and f.full != f.base),
            float(mention != f.base and mention != f.full),
            math.log1p(self.index.text_frequency[key_id]),
        ]

    def _compute_entity_features(self, entity_id: int) -> _EntityFeatures:
        entity = self._entity(entity_id)
        triples = self.store.triples(entity_id)[: self.config.max_triples]
        rel_names = {_normalized_relation(t.relation) for t in triples}
        tails = {frozenset(normalize(t.tail)) for t in triples if 2 <= len(t.tail) <= 20}
        dis = frozenset(normalize(entity.disambiguation)) if entity.disambiguation else frozenset()
        desc = frozenset(_bigrams(normalize(entity.description[:500]))) if entity.description else frozenset()
        relations = tuple(frozenset(r) for r in rel_names)
        relation_bigrams = tuple(frozenset(_bigrams(r)) for r in rel_names if len(r) > 1)
        return _EntityFeatures(
            relations=relations,
            relation_bigrams=relation_bigrams,
            tails=tuple(tails),
            disambiguation=dis,
            description=desc,
            base=normalize(entity.base),
            full=normalize(entity.name),
            log_triples=math.log1p(entity.n_triples),
            relation_chars=frozenset().union(*relations),
            relation_grams=frozenset().union(*relation_bigrams),
            tail_chars=frozenset().union(*tails),
        )


@lru_cache(maxsize=500_000)
def _normalized_relation(relation: str) -> str:
    # KgCLUE has ~246k relation names shared by 3.1M entities: normalise each once.
    return normalize(relation)


def _inverse_map(offmap: list[int], n_orig: int) -> list[int]:
    """Original index -> normalised index (a dropped character maps to the next kept one)."""
    inv = [len(offmap)] * (n_orig + 1)
    j = 0
    for i in range(n_orig):
        while j < len(offmap) and offmap[j] < i:
            j += 1
        inv[i] = j
    return inv
