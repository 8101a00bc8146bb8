"""Chinese text analysis for BM25, shared by every sparse backend.

The embedded backend (tantivy) has no CJK analyzer, so text is pre-tokenised here into
whitespace-separated terms. The functions mirror what a search cluster does with the mapping in
`search_cluster.py` (standard tokenizer + cjk_width + lowercase + cjk_bigram), so both backends
index the same terms and rank alike:

- `bigrams`: each run of CJK characters becomes its overlapping bigrams; a lone CJK character
  stays a unigram (this is Lucene's cjk_bigram). Other runs become lowercased words.
- `chars`: every CJK character on its own (the standard tokenizer's output), for queries of a
  single character, which bigrams cannot match.
- `jieba_words`: jieba's search-mode words, an alternative for the embedded backend only.
"""
from __future__ import annotations

import logging
import re
import unicodedata

log = logging.getLogger(__name__)

# Han (incl. extension A and compatibility ideographs), kana and Hangul: the scripts cjk_bigram joins.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_TOKEN = re.compile(rf"[{_CJK}]+|[^\W_{_CJK}]+(?:[.'][^\W_{_CJK}]+)*")
_CJK_RUN = re.compile(rf"[{_CJK}]+")

#: Queries are cut to this many characters: a cluster refuses a bool query of more than 1,024
#: clauses, and a pasted page is not a better query than its first paragraph.
MAX_QUERY_CHARS = 512


class QueryError(ValueError):
    """A query that cannot be searched (empty, or nothing searchable left after analysis)."""


def normalize(text: str) -> str:
    """Full-width to half-width and lowercase (cjk_width + lowercase on the cluster side)."""
    return unicodedata.normalize("NFKC", text).lower()


def _runs(text: str):
    for match in _TOKEN.finditer(normalize(text)):
        run = match.group()
        yield run, bool(_CJK_RUN.fullmatch(run))


def bigrams(text: str) -> list[str]:
    """Overlapping CJK bigrams (a lone CJK character stays itself) and lowercased words."""
    terms: list[str] = []
    for run, is_cjk in _runs(text):
        if not is_cjk or len(run) == 1:
            terms.append(run)
        else:
            terms.extend(run[i : i + 2] for i in range(len(run) - 1))
    return terms


def chars(text: str) -> list[str]:
    """Single CJK characters and lowercased words (what the standard tokenizer emits)."""
    terms: list[str] = []
    for run, is_cjk in _runs(text):
        terms.extend(run if is_cjk else [run])
    return terms


def lone_chars(text: str) -> list[str]:
    """The CJK characters of a query that stand alone (no CJK neighbour), e.g. '猫' in '猫 dog'.

    Their bigram analysis is a unigram that only matches documents where the character also
    stands alone, so the backends look these up in the per-character fields instead."""
    return [run for run, is_cjk in _runs(text) if is_cjk and len(run) == 1]


def jieba_words(text: str) -> list[str]:
    import jieba

    return [w for w in (t.strip() for t in jieba.lcut_for_search(normalize(text))) if w and _TOKEN.match(w)]


def prepare_query(query: str) -> str:
    """Reject empty queries and cut very long ones, with a clear message either way."""
    if query is None or not str(query).strip():
        raise QueryError("empty query: give at least one character to search for")
    query = str(query).strip()
    if len(query) > MAX_QUERY_CHARS:
        log.warning("query of %d characters cut to its first %d", len(query), MAX_QUERY_CHARS)
        query = query[:MAX_QUERY_CHARS]
    if not bigrams(query):
        raise QueryError(f"query {query[:40]!r} has no searchable characters (only punctuation or spaces)")
    return query
