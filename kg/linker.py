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

Scoring every candidate of every occurrence is the KBQA service's hot path (`rank` runs on
every question), so the part of each score that does not depend on the context is computed
once per (alias, candidate), and a candidate sharing no character with the context skips the
context features, all 0 for it (`_occurrence_scores`). The scores are the same floats as the
plain weights . `_feature_vector`, which `feature_rows` still gives the fitting.
"""
from __future__ import annotations

import itertools
import math
import operator
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache

from wenzhi.kg.alias_index import AliasIndex
from wenzhi.kg.names import normalize, normalize_with_offsets
from wenzhi.kg.store import Entity, TripleStore

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
# The features before log_prior depend on the text around the mention; the rest only on the
# alias and the candidate, so their weighted terms are computed once per (alias, candidate).
_N_CONTEXT_FEATURES = FEATURES.index("log_prior")


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


# Entities with more relations (or short tails) than this also get an inverted index.
_INDEX_MIN_GROUPS = 16


@dataclass(frozen=True)
class _Groups:
    """Character sets (one per relation name, or per short tail), and their overlap with a context.

    Most entities have a few groups, and one set intersection each (a C loop) is cheapest. But
    an entity can have hundreds of relations, most sharing nothing with a given context: those
    also get an inverted index, char -> indices of the groups holding it, so overlap costs work
    in the characters they share, not one intersection per group."""
    groups: tuple[frozenset, ...]
    sizes: tuple[int, ...]  # distinct characters per group
    chars: frozenset  # every group's characters
    index: dict | None  # char -> tuple of group indices, for more than _INDEX_MIN_GROUPS groups

    @classmethod
    def of(cls, groups: list[frozenset]) -> "_Groups":
        groups = tuple(groups)
        index = None
        if len(groups) > _INDEX_MIN_GROUPS:
            lists: dict[str, list[int]] = {}
            for i, group in enumerate(groups):
                for c in group:
                    lists.setdefault(c, []).append(i)
            index = {c: tuple(ix) for c, ix in lists.items()}
        return cls(groups, tuple(map(len, groups)), frozenset().union(*groups), index)

    def hits(self, chars: frozenset) -> list[int]:
        """How many of each group's characters are in `chars`, in group order."""
        if self.index is None:
            return list(map(len, map(chars.intersection, self.groups)))
        counts = [0] * len(self.groups)
        for c in self.chars & chars:
            for i in self.index[c]:
                counts[i] += 1
        return counts


@dataclass(frozen=True)
class _EntityFeatures:
    relations: _Groups
    relation_bigrams: tuple[tuple[str, ...], ...]  # distinct bigrams of each relation, same order
    tails: _Groups
    disambiguation: frozenset
    description: frozenset  # character bigrams
    base: str  # normalised
    full: str  # normalised full name
    log_triples: float
    # Every character of its relations, short tails and disambiguation: a context sharing none
    # of them gives the entity no relation, tail or disambiguation evidence (see `_occurrence_scores`).
    chars: frozenset


class _Context:
    """The text around a mention (the mention itself left out) as characters, and as bigrams
    built only when a candidate has a description to compare them with."""

    __slots__ = ("text", "chars", "_grams")

    def __init__(self, text: str):
        self.text = text
        self.chars = frozenset(text)
        self._grams: set[str] | None = None

    @property
    def grams(self) -> set[str]:
        if self._grams is None:
            self._grams = _bigrams(self.text)
        return self._grams


def _bigrams(text: str) -> set[str]:
    return set(map(operator.add, text, text[1:]))  # text[i] + text[i + 1], at C speed


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
        # Per alias and per entity, not per occurrence: an AliasIndex does not change once built.
        self._mention_features = lru_cache(maxsize=200_000)(self._compute_mention_features)
        self._candidates = lru_cache(maxsize=200_000)(self._compute_candidates)
        # The weights are folded into these: a linker's config must not change once it is built.
        self._prepared = lru_cache(maxsize=200_000)(self._prepare_candidates)
        # Per entity and the few of its characters a context holds (see `_compute_overlap`).
        self._overlap = lru_cache(maxsize=100_000)(self._compute_overlap)

    # -- public ---------------------------------------------------------------------------
    def link(self, text: str, spans: list[tuple[int, int]] | None = None) -> list[Mention]:
        """Mentions in `text`, in text order. `spans`: optional NER (start, end) character spans
        into `text`; when given, only those spans are linked."""
        if not text or not text.strip():
            return []
        norm, offmap = normalize_with_offsets(text)
        found = self._spans_from_ner(text, norm, offmap, spans) if spans is not None else self._detect(norm)
        if offmap is None:  # nothing dropped: offsets into `norm` are offsets into `text`
            return [self._disambiguate(text, norm, s, e, key_id, s, e) for s, e, key_id in found]
        return [self._disambiguate(text, norm, s, e, key_id, offmap[s], offmap[e - 1] + 1)
                for s, e, key_id in found]

    def rank(self, text: str, k: int = 5) -> list[tuple[Entity, float, Mention]]:
        """The entities `text` is most likely about, best first: KBQA topic-entity selection.

        Unlike `link`, every alias occurrence competes (overlapping ones and 1-character
        entries too), each candidate scored with the same features, in which the mention's
        length now matters (a question's subject is usually its longest KB name)."""
        if not text or not text.strip():
            return []
        cfg = self.config
        norm, offmap = normalize_with_offsets(text)
        text_chars = frozenset(norm + "\x00")  # every context's characters are among these
        occurrences = []
        for s, e, key_id in set(self.index.matches(norm, single_chars=True)):
            if cfg.context:
                cands = self._occurrence_scores(norm, s, e, key_id, text_chars)
            else:  # the baseline: longest match first, then the most frequent homonym
                cands = [(eid, 100.0 * (e - s) + math.log(max(p, 1e-9))) for eid, p in self._candidates(key_id)]
            if offmap is None:
                occurrences.append((s, e, cands))
            else:
                occurrences.append((offmap[s], offmap[e - 1] + 1, cands))
        scored = [(r, eid, o_start, o_end) for o_start, o_end, cands in occurrences for eid, r in cands]
        # best first; equal scores keep their order (a stable sort, reversed or not)
        scored.sort(key=operator.itemgetter(0), reverse=True)
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
                rows.append((eid, self._feature_vector(norm[s:e], key_id, ctx, eid, prior)))
        return rows

    # -- mention detection ----------------------------------------------------------------
    def _detect(self, norm: str) -> list[tuple[int, int, int]]:
        # (-length, start, ...) tuples sort longest first, then leftmost, with no key function
        found = [(s - e, s, e, k)
                 for s, e, k in self.index.matches(norm, single_chars=self.config.single_char_mentions)]
        if not found:
            return []
        found.sort()
        taken = bytearray(len(norm))
        chosen = []
        for _, s, e, key_id in found:
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
        cands = self._candidates(key_id) if key_id >= 0 else ()
        if not cands:
            return Mention(surface, o_start, o_end, None, 0.0, [])
        if len(cands) == 1:  # the common case in running text: nothing to weigh
            entity = self._entity(cands[0][0])
            return Mention(surface, o_start, o_end, entity, 1.0, [(entity, 1.0)])
        if cfg.context:
            raw = [r for _, r in self._occurrence_scores(norm, s, e, key_id)]
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

    def _occurrence_scores(self, norm: str, s: int, e: int, key_id: int,
                           text_chars: frozenset | None = None) -> list[tuple[int, float]]:
        """(entity id, linear score) for each candidate of the alias occurrence norm[s:e], in
        candidate order: the same floats as w . `_feature_vector`, summed in the same order.
        `text_chars`: the characters of all of `norm` and the separator, if at hand."""
        w = self.config.weights
        ctx = None
        found = []
        for eid, f, fixed, fixed_score in self._prepared(norm[s:e], key_id):
            # Most candidates (3 in 4 on KgCLUE questions, mostly 1-character entries) share no
            # character with the text around the mention: their context features are all 0, and
            # adding 0.0 terms changes no float, so the score is the precomputed context-free sum.
            if f.description or text_chars is None or not f.chars.isdisjoint(text_chars):
                if ctx is None:
                    ctx = self._context(norm, s, e)
                shared = f.chars & ctx.chars
                if shared or f.description:
                    features = self._shared_context_features(eid, f, shared, ctx)
                    fixed_score = sum((*map(operator.mul, w, features), *fixed))
            found.append((eid, fixed_score))
        return found

    def _shared_context_features(self, entity_id: int, f: _EntityFeatures, shared: frozenset,
                                 ctx: _Context) -> tuple[float, ...]:
        """`_context_features(f, ctx)`, from the entity's characters the context holds (`shared`)."""
        rel_cover, rel_hits, tail_cover, disambiguation, gram_checks = self._overlap(entity_id, shared)
        rel_gram_cover = 0.0
        if gram_checks:
            in_text = ctx.text.__contains__
            rel_gram_cover = max(sum(map(in_text, grams)) / n for grams, n in gram_checks)
        description = 0.0
        if f.description:
            grams = ctx.grams
            description = len(f.description & grams) / len(grams) if grams else 0.0
        return rel_cover, rel_hits, rel_gram_cover, tail_cover, disambiguation, description

    def _compute_overlap(self, entity_id: int, shared: frozenset) -> tuple:
        """What the relation, tail and disambiguation features need to know of a context: only
        which of the entity's characters it holds (`shared`, 1 or 2 in most questions, and the
        same few again and again, hence cached). Returns (relation_cover, relation_hits,
        tail_cover, disambiguation, ((relation bigrams to look for in the context, how many
        bigrams the relation has), ...))."""
        f = self._entity_features(entity_id)
        rel_cover = tail_cover = 0.0
        gram_checks = []
        hits = f.relations.hits(shared)
        best_hits = max(hits, default=0)
        if best_hits:
            rel_cover = max(map(operator.truediv, hits, f.relations.sizes))
            for grams in itertools.compress(f.relation_bigrams, hits):
                # A bigram is in the context only if both its characters are; a relation with
                # none such has a bigram cover of 0, which cannot raise the max.
                possible = tuple(g for g in grams if g[0] in shared and g[1] in shared)
                if possible:
                    gram_checks.append((possible, len(grams)))
        tail_hits = f.tails.hits(shared)
        if any(tail_hits):
            tail_cover = max(map(operator.truediv, tail_hits, f.tails.sizes))
        dis = f.disambiguation
        return (rel_cover, min(best_hits, 4) / 4.0, tail_cover,
                len(dis & shared) / len(dis) if dis else 0.0, tuple(gram_checks))

    def _context(self, norm: str, s: int, e: int) -> _Context:
        w = self.config.context_window
        return _Context(norm[max(0, s - w) : s] + "\x00" + norm[e : e + w])

    def _feature_vector(self, mention: str, key_id: int, ctx: _Context, entity_id: int,
                        prior: float) -> list[float]:
        """The FEATURES of one candidate: the straightforward form `feature_rows` gives the fitting."""
        f = self._entity_features(entity_id)
        return [*self._context_features(f, ctx), *self._fixed_features(mention, key_id, f, prior)]

    def _context_features(self, f: _EntityFeatures, ctx: _Context) -> tuple[float, ...]:
        """The first `_N_CONTEXT_FEATURES` features: overlap of the entity with the context."""
        chars = ctx.chars
        rel_cover = rel_gram_cover = tail_cover = 0.0
        relation_hits = f.relations.hits(chars)
        best_hits = max(relation_hits, default=0)
        if best_hits:
            rel_cover = max(map(operator.truediv, relation_hits, f.relations.sizes))
            # Only relations sharing a character with the context can score; a relation's bigram
            # is among the context's bigrams exactly when it is a substring of the context text.
            in_text = ctx.text.__contains__
            rel_gram_cover = max((sum(map(in_text, grams)) / len(grams)
                                  for hits, grams in zip(relation_hits, f.relation_bigrams) if hits and grams),
                                 default=0.0)
        tail_hits = f.tails.hits(chars)
        if any(tail_hits):
            tail_cover = max(map(operator.truediv, tail_hits, f.tails.sizes))
        description = 0.0
        if f.description:
            grams = ctx.grams
            description = len(f.description & grams) / len(grams) if grams else 0.0
        return (
            rel_cover,
            min(best_hits, 4) / 4.0,
            rel_gram_cover,
            tail_cover,
            len(f.disambiguation & chars) / len(f.disambiguation) if f.disambiguation else 0.0,
            description,
        )

    def _fixed_features(self, mention: str, key_id: int, f: _EntityFeatures, prior: float) -> tuple[float, ...]:
        """The features after the context ones: the alias and the candidate alone."""
        length, single_char, no_word_char, text_frequency = self._mention_features(mention, key_id)
        return (
            math.log(max(prior, 1e-9)),
            f.log_triples,
            length,
            single_char,
            no_word_char,
            float(mention == f.full and f.full != f.base),
            float(mention != f.base and mention != f.full),
            text_frequency,
        )

    def _prepare_candidates(self, mention: str, key_id: int) -> tuple:
        """(entity id, features, weighted context-free terms, their sum) per candidate of an alias."""
        fixed_weights = self.config.weights[_N_CONTEXT_FEATURES:]
        out = []
        for eid, prior in self._candidates(key_id):
            f = self._entity_features(eid)
            fixed = tuple(map(operator.mul, fixed_weights, self._fixed_features(mention, key_id, f, prior)))
            out.append((eid, f, fixed, sum(fixed)))
        return tuple(out)

    def _compute_candidates(self, key_id: int) -> tuple[tuple[int, float], ...]:
        return tuple(self.index.key_candidates(key_id)[: self.config.max_candidates])

    def _compute_mention_features(self, mention: str, key_id: int) -> tuple[float, float, float, float]:
        """The features of the mention alone (same for every candidate and occurrence)."""
        return (min(len(mention), 12) / 12.0, float(len(mention) == 1), float(not _has_word_char(mention)),
                math.log1p(self.index.text_frequency[key_id]))

    def _compute_entity_features(self, entity_id: int) -> _EntityFeatures:
        entity = self._entity(entity_id)
        triples = self.store.triples(entity_id)[: self.config.max_triples]
        # (a name or tail that normalises to nothing, e.g. spaces, can match no context)
        rel_parts = [p for p in map(_relation_parts, {_normalized_relation(t.relation) for t in triples}) if p[0]]
        tails = {frozenset(normalize(t.tail)) for t in triples if 2 <= len(t.tail) <= 20} - {frozenset()}
        dis = frozenset(normalize(entity.disambiguation)) if entity.disambiguation else frozenset()
        relations = _Groups.of([chars for chars, _ in rel_parts])
        tail_groups = _Groups.of(list(tails))
        desc = frozenset(_bigrams(normalize(entity.description[:500]))) if entity.description else frozenset()
        return _EntityFeatures(
            relations=relations,
            relation_bigrams=tuple(bigrams for _, bigrams in rel_parts),
            tails=tail_groups,
            disambiguation=dis,
            description=desc,
            base=normalize(entity.base),
            full=normalize(entity.name),
            log_triples=math.log1p(entity.n_triples),
            chars=relations.chars | tail_groups.chars | dis,
        )


@lru_cache(maxsize=500_000)
def _normalized_relation(relation: str) -> str:
    # KgCLUE has ~246k relation names shared by 3.1M entities: normalise each once.
    return normalize(relation)


@lru_cache(maxsize=500_000)
def _relation_parts(normalized_relation: str) -> tuple[frozenset, tuple[str, ...]]:
    """A relation name's characters and distinct bigrams: made once, shared by its entities."""
    return frozenset(normalized_relation), tuple(_bigrams(normalized_relation))


def _inverse_map(offmap: list[int], n_orig: int) -> list[int]:
    """Original index -> normalised index (a dropped character maps to the next kept one)."""
    inv = [len(offmap)] * (n_orig + 1)
    j = 0
    for i in range(n_orig):
        while j < len(offmap) and offmap[j] < i:
            j += 1
        inv[i] = j
    return inv
