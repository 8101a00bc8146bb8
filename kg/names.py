"""Entity names: split the disambiguation suffix, and normalise text for matching.

KB heads look like `守望星光（韩玉玲、刘东考演唱歌曲）` (KgCLUE, full-width brackets) or
`机械设计基础(杨可桢著)` (NLPCC, ASCII brackets). Matching text against names must ignore
width, script (traditional/simplified), case and spaces, and the linker needs to map every
match in the normalised text back to the user's original characters, so `normalize_with_offsets`
keeps a per-character offset map.
"""
from __future__ import annotations

import bisect
import functools
import re
from typing import Sequence

import numpy as np

_OPEN = {"）": "（", ")": "("}
_OPENERS = set("（(")
_CLOSERS = set("）)")

# Full-width ASCII block U+FF01..U+FF5E maps onto U+0021..U+007E; the ideographic space onto a space.
_WIDTH_TABLE = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F)}
_WIDTH_TABLE[0x3000] = 0x20
_SPACE_RE = re.compile(r"\s+")


def parse_name(name: str) -> tuple[str, str | None]:
    """Split a KB head into (base name, disambiguation or None).

    Only a bracketed group that ends the name counts, and only when something precedes it, so
    `(+)-二异松蒎基氯硼烷` keeps its leading bracket and nested suffixes `A（B（C））` split at the
    outer group.
    """
    name = name.strip()
    if not name or name[-1] not in _CLOSERS:
        return name, None
    depth = 0
    for i in range(len(name) - 1, -1, -1):
        ch = name[i]
        if ch in _CLOSERS:
            depth += 1
        elif ch in _OPENERS:
            depth -= 1
            if depth == 0:
                base = name[:i].strip()
                disambiguation = name[i + 1 : -1].strip()
                if not base or not disambiguation:
                    return name, None
                return base, disambiguation
    return name, None  # unbalanced brackets: not a suffix


@functools.lru_cache(maxsize=1)
def _fold_table() -> dict[int, int]:
    """One str.translate table: full width -> half width, and traditional -> simplified
    character by character (OpenCC's t2s applied to each CJK character alone).

    Per character rather than OpenCC's phrase-aware conversion: matching only needs text and
    aliases folded the same way, this keeps one output character per input character (so
    offsets map back exactly), and translate() runs at C speed, which OpenCC's per-call
    conversion does not reach at the linker's 1M chars/s target."""
    import opencc

    converter = opencc.OpenCC("t2s")
    table = dict(_WIDTH_TABLE)
    ranges = [(0x2E80, 0x2FDF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2A6DF)]
    chars = [chr(cp) for lo, hi in ranges for cp in range(lo, hi + 1)]
    # Newlines keep OpenCC from matching phrases across neighbouring characters.
    converted = converter.convert("\n".join(chars)).split("\n")
    if len(converted) != len(chars):  # never seen; fall back to one call per character
        converted = [converter.convert(c) for c in chars]
    for src, dst in zip(chars, converted):
        if len(dst) == 1 and dst != src:
            table[ord(src)] = ord(dst)
    return table


def _fold_slow(text: str) -> str:
    """Width, script and case folding, one output character per input character: the
    definition `_fold` follows."""
    text = text.translate(_fold_table())
    lowered = text.lower()
    if len(lowered) != len(text):  # e.g. 'İ'.lower() has two code points: fold char by char
        lowered = "".join(c.lower()[0] for c in text)
    return lowered


@functools.lru_cache(maxsize=1)
def _fold_codes() -> np.ndarray:
    """`_fold_slow` of every single code point, as one array: code point -> folded code point.

    Mapping a text through it with numpy folds at ~18M chars/s per call (and ~100M on a batch
    joined into one string) where str.translate with a dict looks each character up in Python
    (~8M). str.lower() is per character except for capital sigma, whose lower case depends on
    its neighbours: `_fold` leaves texts holding one to `_fold_slow`."""
    codes = np.arange(0x110000, dtype=np.uint32)
    table = _fold_table()
    codes[np.fromiter(table.keys(), np.uint32, len(table))] = np.fromiter(table.values(), np.uint32, len(table))
    chars = codes.tobytes().decode("utf-32-le", "surrogatepass")  # each code point, already translated
    lowered = []
    for i in range(0, len(chars), 4096):  # whole chunks at C speed; per character only where needed
        chunk = chars[i : i + 4096]
        low = chunk.lower()
        lowered.append(low if len(low) == len(chunk) and _SIGMA not in chunk
                       else "".join(c.lower()[0] for c in chunk))
    return np.frombuffer("".join(lowered).encode("utf-32-le", "surrogatepass"), np.uint32)


_SIGMA = "\u03a3"
_SHORT = 48


def _fold(text: str) -> str:
    """Width, script and case folding, one output character per input character (`_fold_slow`)."""
    if len(text) < _SHORT or _SIGMA in text:  # numpy's fixed cost per call outweighs it on a name
        return _fold_slow(text)
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)
    return _fold_codes()[codes].tobytes().decode("utf-32-le", "surrogatepass")


def normalize(text: str) -> str:
    """Matching form of `text`: half width, simplified script, lowercase, no whitespace."""
    # str.split() splits on exactly the characters `\s` matches (str.isspace), and is faster.
    return "".join(_fold(text).split())


class OffsetMap:
    """Normalised index -> original index, for text whose whitespace runs were dropped.

    Stored as one entry per kept segment (not per character) so long texts with a newline per
    line map in O(segments) memory; lookups bisect."""

    __slots__ = ("norm_starts", "orig_starts", "length")

    def __init__(self, norm_starts: list[int], orig_starts: list[int], length: int):
        self.norm_starts, self.orig_starts, self.length = norm_starts, orig_starts, length

    def __getitem__(self, i: int) -> int:
        if not 0 <= i < self.length:
            raise IndexError(i)
        k = bisect.bisect_right(self.norm_starts, i) - 1
        return self.orig_starts[k] + (i - self.norm_starts[k])

    def __len__(self) -> int:
        return self.length


def normalize_with_offsets(text: str) -> tuple[str, OffsetMap | None]:
    """`normalize(text)` plus a map from each of its characters to the index in `text` it came
    from; None when no character was dropped (normalised index i is original index i)."""
    return _drop_spaces(_fold(text))


def normalize_many(texts: Sequence[str]) -> list[tuple[str, OffsetMap | None]]:
    """`normalize_with_offsets` of each text, folded in one pass over all of them (folding maps
    each character alone, so a batch folds as its texts would one by one)."""
    joined = "".join(texts)
    if _SIGMA in joined:  # the one context-dependent case: each text alone (see `_fold_codes`)
        return [normalize_with_offsets(t) for t in texts]
    folded = _fold(joined)
    out, pos = [], 0
    for text in texts:
        out.append(_drop_spaces(folded[pos : pos + len(text)]))
        pos += len(text)
    return out


def normalize_each(texts) -> list[str]:
    """`normalize` of each text, folded in one pass over all of them (as `normalize_many`)."""
    texts = list(texts)
    joined = "".join(texts)
    if _SIGMA in joined:
        return [normalize(t) for t in texts]
    folded = _fold(joined)
    out, pos = [], 0
    for text in texts:
        out.append("".join(folded[pos : pos + len(text)].split()))
        pos += len(text)
    return out


def _drop_spaces(folded: str) -> tuple[str, OffsetMap | None]:
    if not _SPACE_RE.search(folded):
        return folded, None
    norm_starts, orig_starts, pieces = [], [], []
    pos = n = 0
    for m in _SPACE_RE.finditer(folded):
        if m.start() > pos:
            norm_starts.append(n)
            orig_starts.append(pos)
            pieces.append(folded[pos : m.start()])
            n += m.start() - pos
        pos = m.end()
    if pos < len(folded):
        norm_starts.append(n)
        orig_starts.append(pos)
        pieces.append(folded[pos:])
        n += len(folded) - pos
    return "".join(pieces), OffsetMap(norm_starts, orig_starts, n)
