"""The linker's score with context, written in Python: the definition.

EntityLinker scores alias occurrences with the compiled kernel over the KB's feature table
(kg/context_scorer.py); this is what that kernel computes, kept as plain Python and sped up only
where no float changes (the precomputed context-free sums, the character-set shortcuts). A linker
made with `compiled=False` scores with it everywhere, and the tests hold the kernel's floats to its
floats bit for bit (tests/kg/test_feature_table.py). Its scores are in turn w . the feature vector
that EntityLinker.feature_rows gives the fitting.

The linker hands in what this needs from the store and the alias index (an alias's candidates,
entities' features, the context-free features of a candidate) and the cache of prepared aliases.
"""
from __future__ import annotations

import operator
from functools import lru_cache
from typing import Callable, NamedTuple

from wenzhi.kg.entity_features import (N_CONTEXT_FEATURES, Context, Profile, description_cover,
                                       disambiguation_cover, relation_overlap, tail_overlap, union)

__all__ = ["DefinitionScorer", "PreparedAlias"]


class PreparedAlias(NamedTuple):
    """What scoring an occurrence of an alias needs that no context changes."""
    candidates: tuple[tuple[Profile, tuple[float, ...], float], ...]  # (profile, weighted context-free terms, their sum)
    chars: frozenset  # every character of the candidates' profiles
    described: bool  # some candidate has a description
    fixed_scores: tuple[float, ...]  # the scores with no context evidence


class DefinitionScorer:
    """Scores of an alias occurrence's candidates with context, in candidate order."""

    def __init__(self, weights: tuple[float, ...], context_window: int,
                 candidates: Callable[[int], tuple[tuple[int, float], ...]],
                 features_of: Callable[[list[int]], dict],
                 fixed_features: Callable[..., tuple[float, ...]], prepared: dict):
        """`candidates(key_id)`: an alias's (entity id, prior) pairs; `features_of(ids)`: entity id
        -> EntityFeatures; `fixed_features(mention, key_id, features, prior)`: a candidate's
        context-free features; `prepared`: key id -> PreparedAlias, a dict with `put(key, value)`
        returning the value (the linker's bounded cache). The weights are folded into `prepared`."""
        self.weights = weights
        self.context_window = context_window
        self.prepared = prepared
        self._candidates = candidates
        self._features_of = features_of
        self._fixed_features = fixed_features
        # Per profile (or its relation names, or tails) and the few of its characters a context
        # holds (see entity_features.relation_overlap).
        self._terms = lru_cache(maxsize=100_000)(self._compute_terms)
        self._relation_overlap = lru_cache(maxsize=100_000)(relation_overlap)
        self._tail_overlap = lru_cache(maxsize=100_000)(tail_overlap)

    def occurrence_scores(self, norm: str, s: int, e: int, key_id: int) -> tuple[float, ...]:
        """The linear score of each candidate of the alias occurrence norm[s:e], in candidate
        order: the same floats as w . EntityLinker's `_feature_vector`, summed in the same order."""
        alias = self.prepared.get(key_id)
        if alias is None:
            alias = self.prepared.put(key_id, self._prepare_alias(norm[s:e], key_id))
        # Most candidates (3 in 4 on KgCLUE questions, mostly 1-character entries) share no
        # character with the text around the mention: their context features are all 0, and
        # adding 0.0 terms changes no float, so the score is the precomputed context-free sum.
        cw = self.context_window
        window = norm[max(0, s - cw) : s] + "\x00" + norm[e : e + cw]  # the text of EntityLinker._context
        # the candidates' characters the context holds: one set lookup per window character
        near = alias.chars.intersection(window)
        if not near and not alias.described:
            return alias.fixed_scores
        ctx, terms_of = None, self._terms
        scores = []
        memo: dict[Profile, tuple] = {}  # homonyms with the same profile: features computed once
        for p, fixed, fixed_score in alias.candidates:
            shared = p.chars & near  # = p.chars & ctx.chars, as near holds all of those
            if shared or p.description:
                weighted = memo.get(p)
                if weighted is None:
                    # `context_features(p, ctx)` times the weights, from the characters the
                    # context holds (`shared`), then its bigrams and description
                    w_rel_cover, w_rel_hits, w_tail_cover, w_disambiguation, gram_checks = terms_of(p, shared)
                    rel_gram_cover = description = 0.0
                    if gram_checks:
                        in_window = window.__contains__
                        rel_gram_cover = max(sum(map(in_window, grams)) / n for grams, n in gram_checks)
                    if p.description:
                        ctx = ctx or Context(window)
                        description = description_cover(p, ctx)
                    w = self.weights
                    weighted = memo[p] = (w_rel_cover, w_rel_hits, w[2] * rel_gram_cover, w_tail_cover,
                                          w_disambiguation, w[5] * description)
                fixed_score = sum((*weighted, *fixed))
            scores.append(fixed_score)
        return tuple(scores)

    def _compute_terms(self, p: Profile, shared: frozenset) -> tuple:
        """`overlap(p, shared)` with its features times their weights (bigram checks as they
        are), from the overlaps of its relation names and of its tails, cached apart: entities
        share those more often than whole profiles."""
        # (a context sharing no character with the names or tails: their overlaps are 0)
        on_relations, on_tails = shared & p.relations.chars, shared & p.tails.chars
        rel_cover, rel_hits, gram_checks = (self._relation_overlap(p.relations, on_relations) if on_relations
                                            else (0.0, 0.0, ()))
        tail_cover = self._tail_overlap(p.tails, on_tails) if on_tails else 0.0
        w = self.weights
        return (w[0] * rel_cover, w[1] * rel_hits, w[3] * tail_cover,
                w[4] * disambiguation_cover(p.disambiguation, shared), gram_checks)

    def _prepare_alias(self, mention: str, key_id: int) -> PreparedAlias:
        fixed_weights = self.weights[N_CONTEXT_FEATURES:]
        cands = self._candidates(key_id)
        features = self._features_of([eid for eid, _ in cands])
        rows = []
        for eid, prior in cands:
            f = features[eid]
            fixed = tuple(map(operator.mul, fixed_weights, self._fixed_features(mention, key_id, f, prior)))
            rows.append((f.profile, fixed, sum(fixed)))
        return PreparedAlias(tuple(rows), union(p.chars for p, _, _ in rows),
                             any(p.description for p, _, _ in rows), tuple(fixed_score for _, _, fixed_score in rows))
