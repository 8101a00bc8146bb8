"""What the linker knows of a candidate entity, and how much of it a context holds.

The disambiguation features (`FEATURES`) compare the text around a mention with what the KB
says about each candidate: its relation names, short tails, disambiguation and description, by
character overlap (Chinese paraphrases share characters, not segmented words, and it needs no
segmenter). No library implements this for a bare triple store, hence hand-written.

An entity's context-side data is a `Profile`, interned by content: entities whose relation names,
short tails, disambiguation and description are the same share one profile, and with it the
cached overlaps (`relation_overlap`, `tail_overlap`), which depend on nothing else; a set of
relation names or of tails shared by many entities is interned too. Everything here is computed
from the first `max_triples` triples of the entity in the store's order, as `TripleStore.triples`
gives them.
"""
from __future__ import annotations

import itertools
import math
import operator
from dataclasses import dataclass
from functools import lru_cache

from wenzhi.kg.names import normalize, normalize_each

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
N_CONTEXT_FEATURES = FEATURES.index("log_prior")

# Entities with more relations (or short tails) than this also get an inverted index.
INDEX_MIN_GROUPS = 16
_SECOND = operator.itemgetter(1)
SHORT_TAIL = (2, 20)  # tails of this many characters count as evidence


class Groups:
    """Character sets (one per relation name, or per short tail), and their overlap with a context.

    Most entities have a few groups, and one set intersection each (a C loop) is cheapest. But
    an entity can have hundreds of relations, most sharing nothing with a given context: those
    also get an inverted index, char -> indices of the groups holding it, so overlap costs work
    in the characters they share, not one intersection per group. The index is built the first
    time a context shares a character with the entity (most candidates' never are)."""

    __slots__ = ("groups", "sizes", "chars", "indexed", "bigrams", "_index")

    def __init__(self, groups: list[frozenset], bigrams: tuple[tuple[str, ...], ...] | None = None):
        self.groups: tuple[frozenset, ...] = tuple(groups)
        self.bigrams = bigrams  # relation names: the distinct bigrams of each, in group order
        self.sizes: tuple[int, ...] = tuple(map(len, self.groups))  # distinct characters per group
        self.chars: frozenset = union(self.groups)  # every group's characters
        self.indexed = len(self.groups) > INDEX_MIN_GROUPS
        self._index: dict | None = None

    @classmethod
    def of(cls, groups: list[frozenset], bigrams: tuple[tuple[str, ...], ...] | None = None) -> "Groups":
        return cls(groups, bigrams)

    def _char_index(self) -> dict:
        """char -> tuple of group indices holding it."""
        if self._index is None:
            lists: dict[str, list[int]] = {}
            for i, group in enumerate(self.groups):
                for c in group:
                    lists.setdefault(c, []).append(i)
            self._index = {c: tuple(ix) for c, ix in lists.items()}
        return self._index

    def hits(self, chars: frozenset) -> list[int]:
        """How many of each group's characters are in `chars`, in group order."""
        if not self.indexed:
            return list(map(len, map(chars.intersection, self.groups)))
        counts = [0] * len(self.groups)
        index = self._char_index()
        for c in self.chars & chars:
            for i in index[c]:
                counts[i] += 1
        return counts

    def shared_hits(self, chars: frozenset) -> tuple[list[int], tuple[int, ...] | list[int], list[int] | None]:
        """(hits, sizes, group indices) of the groups that can share characters with `chars`: all
        groups in order (indices None), or with an index only those sharing one, since the others
        add nothing to a maximum of hits or of hits / size."""
        if not self.indexed:
            return list(map(len, map(chars.intersection, self.groups))), self.sizes, None
        counts: dict[int, int] = {}
        index = self._char_index()
        for c in self.chars & chars:
            for i in index[c]:
                counts[i] = counts.get(i, 0) + 1
        sizes = self.sizes
        return list(counts.values()), [sizes[i] for i in counts], list(counts)


@dataclass(frozen=True, eq=False)
class Profile:
    """An entity's context-side data; compared by identity (equal content is interned, and so
    are its relation names and its tails, which many entities share)."""
    relations: Groups  # with the bigrams of each relation name
    tails: Groups
    disambiguation: frozenset
    description: frozenset  # character bigrams
    # Every character of its relations, short tails and disambiguation: a context sharing none
    # of them gives the entity no relation, tail or disambiguation evidence.
    chars: frozenset


@dataclass(frozen=True, eq=False)
class EntityFeatures:
    profile: Profile
    base: str  # normalised
    full: str  # normalised full name
    log_triples: float


class Context:
    """The text around a mention (the mention itself left out) as characters, and as bigrams,
    each built only when asked for (most occurrences need neither: see EntityLinker)."""

    __slots__ = ("text", "_chars", "_grams")

    def __init__(self, text: str):
        self.text = text
        self._chars: frozenset | None = None
        self._grams: set[str] | None = None

    @property
    def chars(self) -> frozenset:
        if self._chars is None:
            self._chars = frozenset(self.text)
        return self._chars

    @property
    def grams(self) -> set[str]:
        if self._grams is None:
            self._grams = bigrams(self.text)
        return self._grams


# Every character of every feature set is one shared string object. Iterating a str makes a new
# object for each CJK character, so `frozenset(text)` gave each entity's sets their own copies
# (76 bytes a character, most of a cached entity's memory: issue 12's serving RSS). The table
# holds the KB's distinct characters, a few thousand.
_CHARS: dict[str, str] = {}


def char_set(text: str) -> frozenset:
    """frozenset(text), its characters the shared objects of `_CHARS`."""
    return frozenset(map(_CHARS.setdefault, text, text))


def union(sets) -> frozenset:
    """The union of frozensets, reusing the largest when it holds all the others (no copy)."""
    sets = [x for x in sets if x]
    if not sets:
        return frozenset()
    largest = max(sets, key=len)
    return largest if all(x <= largest for x in sets) else frozenset().union(*sets)


def bigrams(text: str) -> set[str]:
    return set(map(operator.add, text, text[1:]))  # text[i] + text[i + 1], at C speed


class ProfileTable:
    """Builds entity features from store rows: one Profile per distinct content, and one Groups
    per distinct set of relation names (entities of a kind share theirs) or of short tails."""

    def __init__(self, max_profiles: int = 200_000):
        self._profiles: dict[tuple, Profile] = {}  # keyed by content (see `profile`)
        self._relations: dict[frozenset, Groups] = {}  # by relation ids
        self._tails: dict[frozenset, Groups] = {}  # by short tails
        self._max = max_profiles

    def features_many(self, entities, rows: dict[int, list[tuple[int, int, str]]],
                      relation_names: dict[int, str]) -> list[EntityFeatures]:
        """The EntityFeatures of each entity from `rows[entity.id]`, its (head id, relation id, tail)
        rows (none when absent; see `TripleStore.triple_rows`), their names normalised in one pass."""
        names = normalize_each([e.base for e in entities] + [e.name for e in entities])
        n = len(entities)
        return [EntityFeatures(self._entity_profile(e, rows.get(e.id, ()), relation_names), names[i], names[n + i],
                               math.log1p(e.n_triples))
                for i, e in enumerate(entities)]

    def _entity_profile(self, entity, rows, relation_names: dict[int, str]) -> Profile:
        lo, hi = SHORT_TAIL
        if len(self._profiles) >= self._max:
            self._profiles.clear()
            self._relations.clear()
            self._tails.clear()
        relations = frozenset(map(_SECOND, rows))  # relation ids
        relation_groups = self._relations.get(relations)
        if relation_groups is None:
            # (a name or tail that normalises to nothing, e.g. spaces, can match no context)
            parts = [p for p in map(_relation_parts, {_normalized_relation(relation_names[r]) for r in relations})
                     if p[0]]
            relation_groups = self._relations[relations] = Groups.of([chars for chars, _ in parts],
                                                                     tuple(grams for _, grams in parts))
        tails = frozenset([t for _, _, t in rows if lo <= len(t) <= hi])
        tail_groups = self._tails.get(tails)
        if tail_groups is None:
            tail_groups = self._tails[tails] = Groups.of(list({char_set(t) for t in normalize_each(tails)} - {frozenset()}))
        description = entity.description[:500] if entity.description else None
        # Groups are interned by content, so they stand for it in the key (compared by identity):
        # the key holds no copy of the entity's names or tails
        key = (relation_groups, tail_groups, entity.disambiguation, description)
        profile = self._profiles.get(key)
        if profile is None:
            profile = self._profiles[key] = self._profile(relation_groups, tail_groups, entity.disambiguation,
                                                          description)
        return profile

    @staticmethod
    def _profile(relation_groups: Groups, tail_groups: Groups, disambiguation: str | None,
                 description: str | None) -> Profile:
        dis = char_set(normalize(disambiguation)) if disambiguation else frozenset()
        return Profile(
            relations=relation_groups,
            tails=tail_groups,
            disambiguation=dis,
            description=frozenset(bigrams(normalize(description))) if description else frozenset(),
            chars=union((relation_groups.chars, tail_groups.chars, dis)),
        )


@lru_cache(maxsize=500_000)
def _normalized_relation(relation: str) -> str:
    # KgCLUE has ~246k relation names shared by 3.1M entities: normalise each once.
    return normalize(relation)


@lru_cache(maxsize=500_000)
def _relation_parts(normalized_relation: str) -> tuple[frozenset, tuple[str, ...]]:
    """A relation name's characters and distinct bigrams: made once, shared by its entities."""
    return char_set(normalized_relation), tuple(bigrams(normalized_relation))


def relation_overlap(relations: Groups, shared: frozenset) -> tuple[float, float, tuple]:
    """What the relation features need to know of a context: only which of the names'
    characters it holds (`shared`: a few, and the same few again and again, hence cached by the
    caller). Returns (relation_cover, relation_hits, ((relation bigrams to look for in the
    context, how many bigrams the relation has), ...))."""
    rel_cover = 0.0
    gram_checks = []
    hits, sizes, which = relations.shared_hits(shared)
    best_hits = max(hits, default=0)
    if best_hits:
        rel_cover = max(map(operator.truediv, hits, sizes))
        grams = (itertools.compress(relations.bigrams, hits) if which is None
                 else [relations.bigrams[i] for i, n in zip(which, hits) if n])
        for relation_grams in grams:
            # A bigram is in the context only if both its characters are; a relation with
            # none such has a bigram cover of 0, which cannot raise the max.
            possible = tuple(g for g in relation_grams if g[0] in shared and g[1] in shared)
            if possible:
                gram_checks.append((possible, len(relation_grams)))
    return rel_cover, min(best_hits, 4) / 4.0, tuple(gram_checks)


def tail_overlap(tails: Groups, shared: frozenset) -> float:
    """tail_cover: the largest fraction of a short tail's characters in `shared`."""
    hits, sizes, _ = tails.shared_hits(shared)
    return max(map(operator.truediv, hits, sizes)) if any(hits) else 0.0


def disambiguation_cover(dis: frozenset, shared: frozenset) -> float:
    return len(dis & shared) / len(dis) if dis else 0.0


def context_features(p: Profile, ctx: Context) -> tuple[float, ...]:
    """The first N_CONTEXT_FEATURES features in their plain form (what the fitting sees), from
    the context's characters alone, no cache."""
    chars = ctx.chars
    rel_cover = rel_gram_cover = tail_cover = 0.0
    relation_hits = p.relations.hits(chars)
    best_hits = max(relation_hits, default=0)
    if best_hits:
        rel_cover = max(map(operator.truediv, relation_hits, p.relations.sizes))
        # Only relations sharing a character with the context can score; a relation's bigram
        # is among the context's bigrams exactly when it is a substring of the context text.
        in_text = ctx.text.__contains__
        rel_gram_cover = max((sum(map(in_text, grams)) / len(grams)
                              for hits, grams in zip(relation_hits, p.relations.bigrams) if hits and grams),
                             default=0.0)
    tail_hits = p.tails.hits(chars)
    if any(tail_hits):
        tail_cover = max(map(operator.truediv, tail_hits, p.tails.sizes))
    return (
        rel_cover,
        min(best_hits, 4) / 4.0,
        rel_gram_cover,
        tail_cover,
        len(p.disambiguation & chars) / len(p.disambiguation) if p.disambiguation else 0.0,
        description_cover(p, ctx),
    )


def description_cover(p: Profile, ctx: Context) -> float:
    if not p.description:
        return 0.0
    grams = ctx.grams
    return len(p.description & grams) / len(grams) if grams else 0.0
