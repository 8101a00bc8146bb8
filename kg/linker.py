"""EntityLinker: find KB entity mentions in raw Chinese text and pick the entity each one means.

1. Mention detection: every alias occurrence in the normalised text (Aho-Corasick), then the
   longest non-overlapping ones; or, when a model supplies NER spans, exactly those spans.
2. Candidates: the alias's entities with their prior p(entity | alias).
3. Disambiguation: a linear score over evidence features (`FEATURES`, kg/entity_features.py): the
   prior, and the overlap between the text around the mention and what the KB says about each
   candidate (its relation names, short tails, disambiguation and description). Relation names
   are the strongest cue in questions, which paraphrase the relation they ask about
   (刘晓华主要讲什么课 -> 主讲课程). The weights were fitted on KgCLUE *train* questions (softmax
   over each question's candidates) and checked on KgCLUE dev and NLPCC 2016, see bench/RESULTS.md.
4. NIL: a mention whose best candidate's posterior falls under `nil_threshold` links to nothing.

Speed (linking is the heart of knowledge masking and of the KBQA service): `link_many` links a
batch of texts with one normalisation, one automaton pass and one batched store read for every
entity the batch needs; `link` is a batch of one. The part of each score that does not depend on
the context is computed once per (alias, candidate). Every score with context (`link_many`,
`link`, NER spans, `rank`) comes from one compiled call per batch over the KB's feature table
(kg/context_scorer.py, kg/feature_table.py): no store rows read and no sets built per candidate,
and nothing per entity cached but its Entity. `DefinitionScorer` (kg/linker_definition.py) is the
same computation in Python, the definition the compiled one equals to the bit (a linker made with
`compiled=False` uses it everywhere: the tests' reference); its scores are in turn the plain
weights . `_feature_vector`, which `feature_rows` gives the fitting.
"""
from __future__ import annotations

import itertools
import math
import operator
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple, Sequence

import numpy as np

from wenzhi.kg.alias_index import SEPARATOR, AliasIndex
from wenzhi.kg.entity_features import (FEATURES, N_CONTEXT_FEATURES, Context, EntityFeatures, ProfileTable,
                                       context_features)
from wenzhi.kg.feature_table import EntityFeatureTable
from wenzhi.kg.linker_definition import DefinitionScorer
from wenzhi.kg.names import normalize_each, normalize_many, normalize_with_offsets
from wenzhi.kg.store import Entity, TripleStore

__all__ = ["EntityLinker", "LinkerConfig", "Mention", "FEATURES", "DEFAULT_WEIGHTS"]


@dataclass(slots=True)
class Mention:
    text: str
    start: int  # character offsets into the ORIGINAL text, end exclusive
    end: int
    entity: Entity | None  # None = NIL
    score: float
    # (entity, posterior), best first: one tuple shared by the mentions with the same outcome.
    # A corpus links to a hundred thousand Mentions per million characters, and each object
    # they hold is one more for the garbage collector to walk: with a list and a tuple of their
    # own, its full collections took half of linking's time (bench/RESULTS.md, issue 14).
    ranked: tuple[tuple[Entity, float], ...] = ()

    @property
    def candidates(self) -> list[tuple[Entity, float]]:
        """`ranked` as a list (a new one each time)."""
        return list(self.ranked)

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
# merged KB: `wenzhi kg fit-linker --kb kb.sqlite --questions kgclue/train.json`.
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


_CACHE_SIZE = 200_000
_FIRST = operator.itemgetter(0)
_SECOND = operator.itemgetter(1)
_MISSING = object()


class _Cache(dict):
    """A dict that empties itself when full: bounded memory for pure lookups, where an LRU's
    bookkeeping would cost more than the rare refill."""

    def __init__(self, max_size: int = _CACHE_SIZE):
        super().__init__()
        self.max_size = max_size

    def put(self, key, value):
        if len(self) >= self.max_size:
            self.clear()
        self[key] = value
        return value


class _Names(NamedTuple):
    """What the context-free features need of an entity (as EntityFeatures has them)."""
    base: str  # normalised
    full: str  # normalised full name
    log_triples: float


def _outcome_key(raw_scores: bytes, key_id: int) -> bytes:
    """The outcome cache's key for an alias's candidates scored with context: their float64 bytes
    (a key the collector does not track, unlike a tuple of floats) and the key id's."""
    return raw_scores + key_id.to_bytes(4, "little")


class EntityLinker:
    def __init__(self, store: TripleStore, alias_index: AliasIndex | None = None,
                 config: LinkerConfig | None = None, progress: bool = False,
                 feature_table: EntityFeatureTable | None = None, compiled: bool = True):
        """`feature_table`: the KB's EntityFeatureTable for this config's `max_triples`; by
        default loaded (or built and saved) beside the store when first needed (`warm` loads it
        now). `compiled=False`: score with the Python definition instead (slower, and it caches
        per-entity feature sets): the reference the tests hold the compiled scores to."""
        self.store = store
        self.index = alias_index if alias_index is not None else AliasIndex.for_store(store, progress=progress)
        self.config = config or LinkerConfig()
        if len(self.config.weights) != len(FEATURES):
            raise ValueError(f"weights has {len(self.config.weights)} entries, FEATURES {len(FEATURES)}")
        if feature_table is not None and feature_table.max_triples != self.config.max_triples:
            raise ValueError(f"feature table made for max_triples={feature_table.max_triples}, "
                             f"the config has {self.config.max_triples}")
        self._progress = progress
        self._compiled = compiled
        self._scorer = None if feature_table is None else self._make_scorer(feature_table)
        # The store and the AliasIndex do not change once opened, and a linker's config must not
        # change once it is built (the weights are folded into `definition.prepared`): all of these are pure.
        self._entities: _Cache = _Cache()  # entity id -> Entity (None: not in the store)
        self._features: _Cache = _Cache()  # entity id -> EntityFeatures
        self._profiles = ProfileTable(_CACHE_SIZE)
        # ranked candidates (`_outcome`), keyed with context by the raw scores' float64 bytes + the key
        # id's 4 bytes (`_outcome_key`), with the prior only by the key id
        self._outcomes: _Cache = _Cache()
        self._unambiguous: _Cache = _Cache()  # key id -> ((its one candidate's Entity, 1.0),)
        self._key_entities: _Cache = _Cache()  # key id -> (its candidates' entities, all in the store)
        self._mention_features = lru_cache(maxsize=_CACHE_SIZE)(self._compute_mention_features)
        self._candidates = lru_cache(maxsize=_CACHE_SIZE)(self._compute_candidates)
        # The scores with context in Python (`compiled=False`, and the tests' reference); its
        # per-alias terms (weights folded in) live in the cache handed to it.
        self.definition = DefinitionScorer(self.config.weights, self.config.context_window, self._candidates,
                                           self._features_of, self._fixed_features, _Cache())

    # -- public ---------------------------------------------------------------------------
    def link(self, text: str, spans: list[tuple[int, int]] | None = None) -> list[Mention]:
        """Mentions in `text`, in text order. `spans`: optional NER (start, end) character spans
        into `text`; when given, only those spans are linked."""
        if not text or not text.strip():
            return []
        if spans is None:
            return self.link_many([text])[0]
        norm, offmap = normalize_with_offsets(text)
        found = self._spans_from_ner(text, norm, offmap, spans)
        self._prefetch({key_id for _, _, key_id in found if key_id >= 0})
        raw: dict = {}  # occurrence -> its candidates' scores, for the ambiguous ones
        if self.config.context:
            ambiguous = [o for o in found if o[2] >= 0 and len(self._candidates(o[2])) > 1]
            raw = dict(zip(ambiguous, self._scores(norm, ambiguous)))
        if offmap is None:  # nothing dropped: offsets into `norm` are offsets into `text`
            return [self._disambiguate(text, key_id, s, e, raw.get((s, e, key_id))) for s, e, key_id in found]
        return [self._disambiguate(text, key_id, offmap[s], offmap[e - 1] + 1, raw.get((s, e, key_id)))
                for s, e, key_id in found]

    def link_many(self, texts: Sequence[str]) -> list[list[Mention]]:
        """`link(text)` of each text, the same mentions, at batch speed: one normalisation, one
        automaton pass, one store read and one compiled scoring call per batch. The way to link a
        corpus: 16 to 64 texts per call (the Mentions of hundreds of texts alive at once outlive
        Python's young-object collections, and the full collections that follow cost more than
        larger batches save)."""
        out: list[list[Mention | None]] = [[] for _ in texts]
        normalized = normalize_many(texts)
        # texts joined by a separator no alias holds: no match spans two texts
        joined = SEPARATOR.join(norm for norm, _ in normalized)
        found = self._detect(joined)
        if not found:
            return out
        scorer = self._context_scorer() if self.config.context and self._compiled else None
        if scorer is None:
            self._prefetch({key_id for _, _, key_id in found})
        ends = list(itertools.accumulate(len(norm) + 1 for norm, _ in normalized))
        t, base, end, text, norm, offmap, mentions = -1, 0, -1, "", "", None, []
        unambiguous = self._unambiguous
        # the occurrences of aliases with several candidates, or not seen before: finished
        # together below. Each (the tuple `found` holds), its text, and its place in that text's
        # Mentions (ints: no new object per occurrence for the garbage collector, whose
        # collections a tuple per occurrence made longer)
        pending, pending_text, pending_at = [], [], []
        for occurrence in found:
            s, e, key_id = occurrence
            if s >= end:  # the next text (with a match)
                t = next(i for i in range(t + 1, len(ends)) if s < ends[i])
                base, end = (ends[t - 1] if t else 0), ends[t]
                text, (norm, offmap), mentions = texts[t], normalized[t], out[t]
            ranked = unambiguous.get(key_id)
            if ranked is None and scorer is not None:
                pending.append(occurrence)
                pending_text.append(t)
                pending_at.append(len(mentions))
                mentions.append(None)
                continue
            if offmap is None:
                o_start, o_end = s - base, e - base
            else:
                o_start, o_end = offmap[s - base], offmap[e - base - 1] + 1
            if ranked is not None:  # the common case in running text: nothing to weigh
                mentions.append(Mention(text[o_start:o_end], o_start, o_end, ranked[0][0], 1.0, ranked))
            else:
                raw = self.definition.occurrence_scores(norm, s - base, e - base, key_id) if self.config.context else None
                mentions.append(self._ambiguous(text[o_start:o_end], o_start, o_end, key_id, raw))
        if pending:
            self._finish_pending(scorer, joined, texts, normalized, ends, pending, pending_text, pending_at, out)
        return out

    def _finish_pending(self, scorer, joined: str, texts, normalized, ends, pending, pending_text, pending_at,
                        out) -> None:
        """Fill in the Mentions `link_many` left pending: the occurrences (start, end, key id)
        `pending`, in text pending_text[i] at position pending_at[i] of its Mentions. Aliases not
        seen before get their entities in one batched read; those with one candidate are done,
        the others are registered with the scorer, and all ambiguous occurrences are scored in
        one call."""
        single = self._prefetch_scored(pending, joined, scorer)
        text_start = [ends[t - 1] if t else 0 for t in pending_text]
        scored = []  # positions in `pending` of the occurrences to score
        for i, (s, e, key_id) in enumerate(pending):
            ranked = single.get(key_id)
            if ranked is None:
                scored.append(i)
                continue
            t, base = pending_text[i], text_start[i]
            offmap = normalized[t][1]
            o_start, o_end = (s - base, e - base) if offmap is None else (offmap[s - base], offmap[e - base - 1] + 1)
            out[t][pending_at[i]] = Mention(texts[t][o_start:o_end], o_start, o_end, ranked[0][0], 1.0, ranked)
        if not scored:
            return
        codes = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        occurrences = [pending[i] for i in scored]
        key_ids = [key_id for _, _, key_id in occurrences]
        scores, offsets = scorer.score_arrays(codes, [text_start[i] for i in scored],
                                              [ends[pending_text[i]] - 1 for i in scored],
                                              [s for s, _, _ in occurrences], [e for _, e, _ in occurrences], key_ids)
        # Outcomes are cached by the alias and its candidates' scores as bytes: a key the
        # collector does not count (a tuple of floats and its pair with the key id, one per
        # outcome, made up a tenth of the objects that brought on its full collections). Equal
        # bytes are equal floats; the few equal floats with other bytes (0.0 and -0.0) give the
        # same outcome, computed twice.
        raw_bytes, offsets = scores.tobytes(), offsets.tolist()
        scores = scores.tolist()
        outcomes, nil_threshold = self._outcomes, self.config.nil_threshold
        for n, (i, (s, e, key_id)) in enumerate(zip(scored, occurrences)):
            # the same scores give the same outcome: half the ambiguous occurrences in running
            # text repeat an earlier one's (no context evidence, or the same evidence)
            a, b = offsets[n], offsets[n + 1]
            key = _outcome_key(raw_bytes[8 * a : 8 * b], key_id)
            ranked = outcomes.get(key)
            if ranked is None:
                ranked = outcomes.put(key, self._outcome(key_id, scores[a:b]))
            best, score = ranked[0]
            t, base = pending_text[i], text_start[i]
            offmap = normalized[t][1]
            o_start, o_end = (s - base, e - base) if offmap is None else (offmap[s - base], offmap[e - base - 1] + 1)
            out[t][pending_at[i]] = Mention(texts[t][o_start:o_end], o_start, o_end,
                                            best if score >= nil_threshold else None, score, ranked)

    def rank(self, text: str, k: int = 5) -> list[tuple[Entity, float, Mention]]:
        """The entities `text` is most likely about, best first: KBQA topic-entity selection.

        Unlike `link`, every alias occurrence competes (overlapping ones and 1-character
        entries too), each candidate scored with the same features, in which the mention's
        length now matters (a question's subject is usually its longest KB name)."""
        if not text or not text.strip():
            return []
        cfg = self.config
        norm, offmap = normalize_with_offsets(text)
        found = list(set(self.index.matches(norm, single_chars=True)))
        if cfg.context:
            scores = self._scores(norm, found)
        occurrences = []
        for i, (s, e, key_id) in enumerate(found):
            if cfg.context:
                cands = zip(map(_FIRST, self._candidates(key_id)), scores[i])
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
            mention = Mention(text[o_start:o_end], o_start, o_end, entity, score, ((entity, score),))
            out.append((entity, score, mention))
            if len(out) == k:
                break
        return out

    def candidate_ids(self, text: str) -> set[int]:
        """Every candidate entity of every alias occurrence (what `rank` chooses from)."""
        norm, _ = normalize_with_offsets(text)
        out: set[int] = set()
        for _, _, key_id in self.index.matches(norm, single_chars=True):
            out.update(eid for eid, _ in self._candidates(key_id))
        return out

    def feature_rows(self, text: str) -> list[tuple[int, list[float]]]:
        """(entity id, feature vector) for every candidate of every alias occurrence, as `rank`
        sees them: what the weights are fitted on."""
        norm, _ = normalize_with_offsets(text)
        rows = []
        for s, e, key_id in set(self.index.matches(norm, single_chars=True)):
            ctx = self._context(norm, s, e)
            for eid, prior in self._candidates(key_id):
                rows.append((eid, self._feature_vector(norm[s:e], key_id, ctx, eid, prior)))
        return rows

    # -- mention detection ----------------------------------------------------------------
    def _detect(self, norm: str) -> list[tuple[int, int, int]]:
        return self.index.longest_matches(norm, single_chars=self.config.single_char_mentions)

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

    # -- store reads ----------------------------------------------------------------------
    def _prefetch(self, key_ids: set[int]) -> None:
        """Read, in one batch each, the entities of these aliases' candidates and, for the
        ambiguous aliases, the candidates' features, whichever are not cached yet."""
        ids, ambiguous, single = set(), set(), []
        # aliases seen before need nothing more (an entity dropped from a full cache since is
        # read again when asked for)
        if not self.config.context:
            done = self._outcomes
        else:  # (the compiled scorer registers aliases itself, as they are scored)
            done = {} if self._compiled else self.definition.prepared
        for key_id in key_ids:
            if key_id in self._unambiguous or key_id in done:
                continue
            cands = self._candidates(key_id)
            ids.update(eid for eid, _ in cands)
            if len(cands) > 1:
                ambiguous.update(eid for eid, _ in cands)
            elif cands:
                single.append(key_id)
        entities = self._entities_of(ids)
        for key_id in single:
            self._unambiguous.put(key_id, ((entities[self._candidates(key_id)[0][0]], 1.0),))
        if self.config.context and not self._compiled:
            self._features_of(ambiguous)

    def _scores(self, norm: str, found) -> list[tuple[float, ...]]:
        """The scores of the candidates of each occurrence (start, end, key id) in the normalised
        text `norm`, in candidate order: compiled, or the Python definition (`compiled=False`)."""
        if not found:
            return []
        if not self._compiled:  # one store read for the candidates of aliases not scored before
            definition = self.definition
            self._prefetch_features({key_id for _, _, key_id in found if key_id not in definition.prepared})
            return [definition.occurrence_scores(norm, s, e, key_id) for s, e, key_id in found]
        scorer = self._context_scorer()
        self._register(scorer, norm, found)
        codes = np.frombuffer(norm.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        n = len(found)
        scores, offsets = scorer.score(codes, [0] * n, [len(norm)] * n, [s for s, _, _ in found],
                                       [e for _, e, _ in found], [key_id for _, _, key_id in found])
        return [tuple(scores[offsets[i] : offsets[i + 1]]) for i in range(n)]

    def _prefetch_scored(self, pending, joined: str, scorer) -> dict[int, tuple]:
        """`_prefetch` for `link_many` with the compiled scorer, over the occurrences (start,
        end, key id) `pending` (those of aliases not known to have one candidate): the entities of
        aliases not seen before in one batched read, each new ambiguous alias registered with the
        scorer (its candidates' context-free terms; their context features come from the table).
        Returns the `ranked` of each new alias with one candidate."""
        first = _first_occurrences(pending, scorer.slots)  # the new aliases
        if not first:  # the common case once warm
            return {}
        # aliases with one candidate (most of them) read from the index as they are, not as
        # `_candidates` tuples: fewer objects kept for the collector
        index, max_candidates = self.index, self.config.max_candidates
        ids, single = set(), {}
        for key_id in first:
            if min(index.candidate_count(key_id), max_candidates) == 1:
                ids.add(single.setdefault(key_id, index.first_candidate(key_id)))
            else:
                ids.update(eid for eid, _ in self._candidates(key_id))
        entities = self._entities_of(ids)
        unambiguous, ranked = self._unambiguous, {}
        for key_id, eid in single.items():
            ranked[key_id] = unambiguous.put(key_id, ((entities[eid], 1.0),))
            del first[key_id]
        self._register(scorer, joined, pending, ranked, first)
        return ranked

    def _register(self, scorer, joined: str, found, skip=(), first: dict | None = None) -> None:
        """Register with the scorer each alias of `found` it lacks, but those in `skip`: its
        candidates' context-free terms (their context features come from the table). `first`:
        where each of those aliases occurs first, when the caller knows already."""
        if first is None:
            first = _first_occurrences(found, scorer.slots, skip)
        if not first:
            return
        if scorer.make_room(len(first)):  # it started over: the batch's other aliases are gone too
            first = _first_occurrences(found, (), skip)
        new = list(first)
        # the candidates' names, normalised in one pass for the whole batch (an id the store
        # lacks, which only a foreign alias index has, gets empty names)
        ids = list({eid for key_id in new for eid, _ in self._candidates(key_id)})
        entities = self._entities_of(ids)
        ents = [entities[eid] or Entity(eid, "", "", None, None, 0) for eid in ids]
        names = normalize_each([x.base for x in ents] + [x.name for x in ents])
        names_of = {eid: _Names(names[i], names[len(ids) + i], math.log1p(x.n_triples))
                    for i, (eid, x) in enumerate(zip(ids, ents))}
        fixed_weights = self.config.weights[N_CONTEXT_FEATURES:]
        for key_id in new:
            s, e = first[key_id]
            mention, cands = joined[s:e], self._candidates(key_id)
            fixed_terms, fixed_scores = [], []
            for eid, prior in cands:
                f = names_of[eid]
                fixed = tuple(map(operator.mul, fixed_weights, self._fixed_features(mention, key_id, f, prior)))
                fixed_terms.append(fixed)
                fixed_scores.append(sum(fixed))
            scorer.add(key_id, [eid for eid, _ in cands], fixed_terms, fixed_scores)

    def warm(self) -> "EntityLinker":
        """Load what scoring with context needs (the feature table, built and saved beside the
        store if missing or stale; the compiled kernel) now, not on the first call: a service's
        memory and start-up, not its first request."""
        if self.config.context and self._compiled:
            self._context_scorer()
        return self

    def _context_scorer(self):
        if self._scorer is None:
            self._scorer = self._make_scorer(EntityFeatureTable.for_store(self.store, self.config.max_triples,
                                                                          progress=self._progress))
        return self._scorer

    def _make_scorer(self, table: EntityFeatureTable):
        from wenzhi.kg.context_scorer import ContextScorer  # numba: imported by the linkers that score

        return ContextScorer(table, self.config.weights, self.config.context_window, _CACHE_SIZE)

    def _prefetch_features(self, key_ids: set[int]) -> None:
        self._features_of({eid for key_id in key_ids for eid, _ in self._candidates(key_id)})

    def _entities_of(self, ids) -> dict[int, Entity | None]:
        """Entity by id (None: not in the store), cached ones from the cache, the others in one
        batched read."""
        cache, out, missing = self._entities, {}, []
        for i in ids:
            entity = cache.get(i, _MISSING)
            if entity is _MISSING:
                missing.append(i)
            else:
                out[i] = entity
        if missing:
            found = self.store.entities(missing)
            for i in missing:
                out[i] = cache.put(i, found.get(i))
        return out

    def _features_of(self, ids) -> dict[int, EntityFeatures]:
        """EntityFeatures by id, the missing ones built from one batched read of their triples."""
        cache, out, missing = self._features, {}, []
        for i in ids:
            features = cache.get(i)
            if features is None:
                missing.append(i)
            else:
                out[i] = features
        if missing:
            entities = self._entities_of(missing)
            rows = self.store.triple_rows(missing, self.config.max_triples)
            # an id the store lacks (only a foreign alias index has one) gets no evidence
            made = self._profiles.features_many([entities[i] or Entity(i, "", "", None, None, 0) for i in missing],
                                                rows, self.store.relation_names())
            for i, features in zip(missing, made):
                out[i] = cache.put(i, features)
        return out

    def _entity(self, entity_id: int) -> Entity | None:
        entity = self._entities.get(entity_id, _MISSING)
        return self._entities_of([entity_id])[entity_id] if entity is _MISSING else entity

    def _entity_features(self, entity_id: int) -> EntityFeatures:
        return self._features.get(entity_id) or self._features_of([entity_id])[entity_id]

    # -- disambiguation -------------------------------------------------------------------
    def _disambiguate(self, text, key_id, o_start, o_end, raw) -> Mention:
        surface = text[o_start:o_end]
        cands = self._candidates(key_id) if key_id >= 0 else ()
        if not cands:
            return Mention(surface, o_start, o_end, None, 0.0, ())
        if len(cands) == 1:  # the common case in running text: nothing to weigh
            entity = self._entity(cands[0][0])
            return Mention(surface, o_start, o_end, entity, 1.0, ((entity, 1.0),))
        return self._ambiguous(surface, o_start, o_end, key_id, raw)

    def _ambiguous(self, surface, o_start, o_end, key_id, raw) -> Mention:
        """The mention (text[o_start:o_end]) of an alias with several candidates, whose scores
        with context are `raw` (None: prior only)."""
        if self.config.context:
            # the same scores give the same outcome: half the ambiguous occurrences in running
            # text repeat an earlier one's (no context evidence, or the same evidence)
            key = _outcome_key(np.asarray(raw, dtype=np.float64).tobytes(), key_id)
            outcome = self._outcomes.get(key)
            if outcome is None:
                outcome = self._outcomes.put(key, self._outcome(key_id, raw))
        else:  # the baseline: the prior decides, the same for every occurrence of the alias
            outcome = self._outcomes.get(key_id)
            if outcome is None:
                raw = [math.log(max(p, 1e-9)) for _, p in self._candidates(key_id)]
                outcome = self._outcomes.put(key_id, self._outcome(key_id, raw))
        best, score = outcome[0]
        return Mention(surface, o_start, o_end, best if score >= self.config.nil_threshold else None, score, outcome)

    def _outcome(self, key_id: int, raw: Sequence[float]) -> tuple[tuple[Entity, float], ...]:
        """Posteriors (a softmax of the raw scores), best first: `ranked`. The first is the
        choice, unless its posterior is under `nil_threshold` (NIL)."""
        entities, complete = self._candidate_entities(key_id)
        top = max(raw)
        exp = [math.exp(r - top) for r in raw]
        z = sum(exp)
        # best first; equal posteriors keep candidate order (a stable sort, reversed or not)
        ranked = tuple(sorted(zip(entities, [x / z for x in exp]), key=_SECOND, reverse=True))
        if not complete:
            ranked = tuple((ent, p) for ent, p in ranked if ent is not None)
        return ranked

    def _candidate_entities(self, key_id: int) -> tuple[tuple[Entity | None, ...], bool]:
        """The Entity of each candidate of an alias, and whether the store has them all."""
        found = self._key_entities.get(key_id)
        if found is None:
            ids = [eid for eid, _ in self._candidates(key_id)]
            by_id = self._entities_of(ids)
            entities = tuple(by_id[eid] for eid in ids)
            found = self._key_entities.put(key_id, (entities, None not in entities))
        return found

    def _context(self, norm: str, s: int, e: int) -> Context:
        w = self.config.context_window
        return Context(norm[max(0, s - w) : s] + "\x00" + norm[e : e + w])

    def _feature_vector(self, mention: str, key_id: int, ctx: Context, entity_id: int,
                        prior: float) -> list[float]:
        """The FEATURES of one candidate: the straightforward form `feature_rows` gives the fitting."""
        f = self._entity_features(entity_id)
        return [*context_features(f.profile, ctx), *self._fixed_features(mention, key_id, f, prior)]

    def _fixed_features(self, mention: str, key_id: int, f: EntityFeatures | _Names, prior: float) -> tuple[float, ...]:
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

    def _compute_candidates(self, key_id: int) -> tuple[tuple[int, float], ...]:
        return tuple(self.index.key_candidates(key_id, self.config.max_candidates))

    def _compute_mention_features(self, mention: str, key_id: int) -> tuple[float, float, float, float]:
        """The features of the mention alone (same for every candidate and occurrence)."""
        return (min(len(mention), 12) / 12.0, float(len(mention) == 1), float(not _has_word_char(mention)),
                math.log1p(self.index.text_frequency[key_id]))


def _first_occurrences(found, known, skip=()) -> dict[int, tuple[int, int]]:
    """(start, end) of the first occurrence of each alias of `found` that is in neither `known`
    nor `skip`, in text order."""
    first: dict[int, tuple[int, int]] = {}
    for s, e, key_id in found:
        if key_id not in first and key_id not in known and key_id not in skip:
            first[key_id] = (s, e)
    return first


def _has_word_char(text: str) -> bool:
    return any(unicodedata.category(c)[0] in "LN" for c in text)


def _inverse_map(offmap, n_orig: int) -> list[int]:
    """Original index -> normalised index (a dropped character maps to the next kept one)."""
    inv = [len(offmap)] * (n_orig + 1)
    j = 0
    for i in range(n_orig):
        while j < len(offmap) and offmap[j] < i:
            j += 1
        inv[i] = j
    return inv
