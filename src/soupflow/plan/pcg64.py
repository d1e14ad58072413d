"""numpy's ``default_rng`` streams in pure Python, for the draws that decide the DAG (random-search points,
sampled analysis pairs): the Snakefile then parses with Snakemake and PyYAML alone (``--sdm conda`` with a
bare Snakemake), and every draw stays bit for bit what ``numpy.random.default_rng(entropy)`` gives, so run
ids and pairs do not depend on whether numpy is installed (tests/test_grid.py compares them with numpy).

Implemented: ``SeedSequence`` (entropy given as an int or a list of ints), the ``PCG64`` bit generator
(XSL-RR 128/64, numpy's default), ``random()``/``uniform()`` (53-bit doubles) and ``integers()`` (Lemire's
bounded method, numpy's default ``use_masked=False``). Only what soupflow draws; not a numpy replacement.
"""

from __future__ import annotations

from itertools import cycle

MASK32, MASK64, MASK128 = (1 << 32) - 1, (1 << 64) - 1, (1 << 128) - 1
_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_MULT_L, _MIX_MULT_R, _XSHIFT, _POOL = 0xCA01F9DD, 0x4973F715, 16, 4
_PCG_MULT = (2549297995355413924 << 64) + 4865540595714422341


def _words(entropy: int | list[int]) -> list[int]:
    """An int (or each int of a list) as little-endian 32-bit words, 0 as one word (numpy's coercion)."""
    words = []
    for value in entropy if isinstance(entropy, (list, tuple)) else [entropy]:
        if value < 0:
            raise ValueError("seed entropy must be non-negative")
        words += [0] if value == 0 else []
        while value:
            words.append(value & MASK32)
            value >>= 32
    return words


def _pool(entropy: int | list[int]) -> list[int]:
    """SeedSequence's entropy pool (4 words) after mixing every entropy word into it."""
    words, const, pool = _words(entropy), [_INIT_A], [0] * _POOL

    def hashmix(value: int) -> int:
        value ^= const[0]
        const[0] = (const[0] * _MULT_A) & MASK32
        value = (value * const[0]) & MASK32
        return value ^ (value >> _XSHIFT)

    def mix(x: int, y: int) -> int:
        result = (_MIX_MULT_L * x - _MIX_MULT_R * y) & MASK32
        return result ^ (result >> _XSHIFT)

    for i in range(_POOL):
        pool[i] = hashmix(words[i] if i < len(words) else 0)
    for src in range(_POOL):
        for dst in range(_POOL):
            if src != dst:
                pool[dst] = mix(pool[dst], hashmix(pool[src]))
    for src in range(_POOL, len(words)):
        for dst in range(_POOL):
            pool[dst] = mix(pool[dst], hashmix(words[src]))
    return pool


def _generate_state64(pool: list[int], n: int) -> list[int]:
    """SeedSequence.generate_state(n, uint64)."""
    const, words, source = _INIT_B, [], cycle(pool)
    for _ in range(2 * n):
        value = next(source) ^ const
        const = (const * _MULT_B) & MASK32
        value = (value * const) & MASK32
        words.append(value ^ (value >> _XSHIFT))
    return [words[2 * i] | (words[2 * i + 1] << 32) for i in range(n)]


class Generator:
    """``numpy.random.default_rng(entropy)``: PCG64 seeded through SeedSequence."""

    def __init__(self, entropy: int | list[int]) -> None:
        seed = _generate_state64(_pool(entropy), 4)
        initstate, initseq = (seed[0] << 64) | seed[1], (seed[2] << 64) | seed[3]
        self.inc = ((initseq << 1) | 1) & MASK128
        self.state = 0
        self._step()
        self.state = (self.state + initstate) & MASK128
        self._step()
        self.half: int | None = None  # the upper 32 bits of the last 64-bit output, for the next 32-bit draw

    def _step(self) -> None:
        self.state = (self.state * _PCG_MULT + self.inc) & MASK128

    def next_uint64(self) -> int:
        self._step()
        value, rotation = ((self.state >> 64) ^ self.state) & MASK64, self.state >> 122
        return ((value >> rotation) | (value << (64 - rotation))) & MASK64

    def next_uint32(self) -> int:
        if self.half is not None:
            value, self.half = self.half, None
            return value
        value = self.next_uint64()
        self.half = value >> 32
        return value & MASK32

    def random(self) -> float:
        return (self.next_uint64() >> 11) * (1.0 / 9007199254740992.0)

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * self.random()

    def integers(self, low: int, high: int | None = None) -> int:
        """An integer in [low, high) (or [0, low)), as ``numpy.random.Generator.integers`` draws it."""
        low, high = (0, low) if high is None else (low, high)
        span = high - 1 - low  # numpy's rng: the largest offset
        if span < 0:
            raise ValueError("high <= low")
        if span == 0:
            return low
        if span == MASK32:
            return low + self.next_uint32()
        if span < MASK32:
            return low + self._lemire(span + 1, self.next_uint32, 32)
        if span == MASK64:
            return low + self.next_uint64()
        return low + self._lemire(span + 1, self.next_uint64, 64)

    @staticmethod
    def _lemire(exclusive: int, draw, bits: int) -> int:
        mask = (1 << bits) - 1
        product = draw() * exclusive
        if product & mask < exclusive:
            threshold = ((1 << bits) - exclusive) % exclusive
            while product & mask < threshold:
                product = draw() * exclusive
        return product >> bits
