"""Per-item random generators at batch speed: `default_rng([seed, corpus, index])` of many items.

Every item of `pretrain prepare` draws from its own generator (model/prepare_examples.py), and
numpy builds one in about 35 microseconds, most of it SeedSequence hashing three small integers
in Cython one word at a time: 6% of the whole preparation (bench/RESULTS.md, issue 14). Here the
hash (numpy's SeedSequence: mix_entropy, then generate_state) runs over a whole partition's
items at once in numpy, and PCG64 is seeded from the result, so each generator is the one
`np.random.default_rng([seed, corpus, index])` gives, drawn for drawn. Hand-written for that
measured speed only; `generators` checks the first item of every call against numpy's own and
falls back to it on any difference (a numpy that changed its seeding).
"""
from __future__ import annotations

import numpy as np
from numpy.random.bit_generator import ISeedSequence

# numpy/random/bit_generator.pyx (SeedSequence, pool size 4)
_POOL = 4
_INIT_A, _MULT_A = 0x43B0D7E5, 0x931E8875
_INIT_B, _MULT_B = 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R = 0xCA01F9DD, 0x4973F715
_MASK = 0xFFFFFFFF


def _constants(init: int, mult: int, n: int) -> list[np.uint32]:
    """The hash constants of n successive hashmix steps (they do not depend on the data)."""
    out, c = [], init
    for _ in range(n):
        out.append(np.uint32(c))
        c = (c * mult) & _MASK
    return out


# mix_entropy hashes 4 words, then 12 more for the 4 x 3 cross mixes; generate_state 8 words
_HASH_A = _constants(_INIT_A, _MULT_A, _POOL + _POOL * (_POOL - 1))
_HASH_B = _constants(_INIT_B, _MULT_B, 2 * _POOL)


def _hashmix(value: np.ndarray, k: int) -> np.ndarray:
    value = value ^ _HASH_A[k]
    value = value * np.uint32((int(_HASH_A[k]) * _MULT_A) & _MASK)  # the constant after its update
    return value ^ (value >> np.uint32(16))


def _mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    result = np.uint32(_MIX_L) * x - np.uint32(_MIX_R) * y
    return result ^ (result >> np.uint32(16))


def pcg64_seeds(entropy: np.ndarray) -> np.ndarray:
    """[n, 4] uint64: `SeedSequence(row).generate_state(4, np.uint64)` of each row of `entropy`
    ([n, 3] integers below 2**32: one uint32 word each, as numpy coerces them)."""
    words = np.asarray(entropy, dtype=np.uint32)
    n = len(words)
    pool = [_hashmix(words[:, i], i) if i < words.shape[1] else _hashmix(np.zeros(n, np.uint32), i)
            for i in range(_POOL)]
    k = _POOL
    for src in range(_POOL):
        for dst in range(_POOL):
            if src != dst:
                pool[dst] = _mix(pool[dst], _hashmix(pool[src], k))
                k += 1
    state = np.empty((n, 2 * _POOL), dtype=np.uint32)
    for i in range(2 * _POOL):
        c = _HASH_B[i]
        value = (pool[i % _POOL] ^ c) * np.uint32((int(c) * _MULT_B) & _MASK)
        state[:, i] = value ^ (value >> np.uint32(16))
    return np.ascontiguousarray(state).view("<u8")


class _Given(ISeedSequence):
    """A seed sequence whose state is already computed (PCG64 asks it for 4 uint64 words)."""

    __slots__ = ("state",)

    def __init__(self, state: np.ndarray):
        self.state = state

    def generate_state(self, n_words, dtype=np.uint32):
        if n_words != 4 or np.dtype(dtype) != np.uint64:
            raise ValueError("a precomputed seed gives PCG64's 4 uint64 words only")
        return self.state


def generators(seed: int, corpus: list[int] | np.ndarray, index: list[int] | np.ndarray) -> list[np.random.Generator]:
    """`np.random.default_rng([seed, corpus[i], index[i]])` for every i."""
    entropy = np.column_stack([np.full(len(index), seed, dtype=np.int64), np.asarray(corpus, np.int64),
                               np.asarray(index, np.int64)]).reshape(-1, 3)
    if not len(entropy):
        return []
    if entropy.min() < 0 or entropy.max() > _MASK:  # more than one word per value: numpy's own
        return [np.random.default_rng(row) for row in entropy.tolist()]
    seeds = pcg64_seeds(entropy)
    out = [np.random.Generator(np.random.PCG64(_Given(s))) for s in seeds]
    reference = np.random.default_rng(entropy[0].tolist()).bit_generator.state
    if out[0].bit_generator.state != reference:  # numpy seeds differently from the version copied
        return [np.random.default_rng(row) for row in entropy.tolist()]
    return out
