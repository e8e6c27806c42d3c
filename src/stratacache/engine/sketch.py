"""A count-min sketch of 4-bit counters: TinyLFU's memory of how often keys were seen.

The sketch answers "about how many times has this key been accessed recently?" for keys that are in
the cache *and* keys that were evicted long ago, in a few bytes per cached entry. It overestimates
(hash collisions only add), never underestimates, and forgets: after ``10 * capacity`` increments every
counter is halved, so yesterday's hot keys fade and a shift in the workload is followed.

Counters saturate at 15, as in Caffeine's 4-bit counters: frequency only has to rank a candidate against
a victim, and a small ceiling keeps one very hot key from dominating after a reset. Each of the four rows
has four counters per slot of capacity (the next power of two above it), sixteen in all as in Caffeine's
sketch, packed two to a byte: 8 bytes per slot. With one counter per slot in each row (4 in all), keys
collided so often that admission let in keys no more frequent than their victims: with 16 the small caches
gained 1-2.5 points (in a simulator with a fixed 1 % window: gli @ 250 13.2 -> 15.7 %, ps @ 250
49.6 -> 51.1 %, OLTP @ 250 21.6 -> 22.6 %; in the engine, OLTP @ 250 went from 23.7 to 25.1 %), for
4 bytes more per entry (99.6 -> 103.8 B at a million entries).

Hashes are mixed with a per-sketch random seed so that an adversary who controls keys (integer keys hash
to themselves in CPython) cannot aim collisions at the entries they want evicted.
"""

from __future__ import annotations

__all__ = ["FrequencySketch"]

_M64 = (1 << 64) - 1
_MAX_COUNT = 15
_DEPTH = 4
_MAX_ROW_BITS = 32  # two 64-bit hashes give four 32-bit row indexes
_COUNTERS_PER_SLOT_BITS = 2  # each row has 4 counters per slot of capacity
# bytes.translate table that halves both counters of every byte in one C-level pass.
_HALVE = bytes((i >> 1) & 0x77 for i in range(256))


class FrequencySketch:
    """Approximate access counts for keys, with periodic ageing.

    >>> sketch = FrequencySketch(capacity=100, seed=1)
    >>> for _ in range(3):
    ...     sketch.increment(hash("a"))
    >>> sketch.frequency(hash("a")) >= 3
    True
    >>> sketch.frequency(hash("never seen")) <= 3
    True
    """

    __slots__ = (
        "_additions",
        "_capacity",
        "_mask",
        "_sample_size",
        "_seed_a",
        "_seed_b",
        "_table",
        "_width",
    )

    def __init__(self, capacity: int, *, seed: int = 0) -> None:
        capacity = max(int(capacity), 16)
        bits = min((capacity - 1).bit_length() + _COUNTERS_PER_SLOT_BITS, _MAX_ROW_BITS)
        self._capacity = capacity
        self._width = 1 << bits  # counters per row
        self._mask = self._width - 1
        self._table = bytearray(_DEPTH * self._width // 2)  # two counters a byte
        self._sample_size = 10 * capacity
        self._additions = 0
        # Two secret seeds: the row indexes come from CPython's tuple hash (an xxHash round in C)
        # of (key hash, seed), at C speed, which an adversary cannot aim without the seeds. See
        # _hashes for why it is applied three times.
        self._seed_a = seed & _M64
        self._seed_b = (seed * 0x9E3779B97F4A7C15 + 1) & _M64

    @property
    def capacity(self) -> int:
        """The number of distinct keys the sketch is sized for."""
        return self._capacity

    @property
    def sample_size(self) -> int:
        """Increments between two halvings."""
        return self._sample_size

    def _hashes(self, key_hash: int) -> tuple[int, int]:
        # One xxHash round leaves the low bits of its result weakly mixed, and two rounds from the
        # same key with different seeds differ by little more than a constant, so rows indexed
        # that way collide together (on the p3 trace: 1.6 points of hit ratio). A second round for
        # ``a`` and ``b`` chained from ``a`` measured as well as splitmix64 and costs a third of it
        # in Python. The compiled sketch computes the same numbers.
        seed_a = self._seed_a
        a = hash((hash((key_hash, seed_a)), seed_a))
        return a, hash((a, self._seed_b))

    def increment(self, key_hash: int) -> None:
        """Count one more access of the key with this ``hash()``."""
        a, b = self._hashes(key_hash)
        mask = self._mask
        width = self._width
        table = self._table
        # The four rows are laid end to end; each takes its index from its own 32 bits of a or b.
        # Counter i is the low nibble of byte i // 2 when i is even, the high one when it is odd.
        for i in (
            a & mask,
            width + ((a >> 32) & mask),
            2 * width + (b & mask),
            3 * width + ((b >> 32) & mask),
        ):
            byte = table[i >> 1]
            shift = (i & 1) << 2
            if (byte >> shift) & _MAX_COUNT < _MAX_COUNT:
                table[i >> 1] = byte + (1 << shift)
        self._additions += 1
        if self._additions >= self._sample_size:
            self.halve()

    def frequency(self, key_hash: int) -> int:
        """The estimated recent access count of the key with this ``hash()`` (0-15)."""
        a, b = self._hashes(key_hash)
        mask = self._mask
        width = self._width
        table = self._table
        i = a & mask
        low = (table[i >> 1] >> ((i & 1) << 2)) & _MAX_COUNT
        i = width + ((a >> 32) & mask)
        low = min(low, (table[i >> 1] >> ((i & 1) << 2)) & _MAX_COUNT)
        i = 2 * width + (b & mask)
        low = min(low, (table[i >> 1] >> ((i & 1) << 2)) & _MAX_COUNT)
        i = 3 * width + ((b >> 32) & mask)
        return min(low, (table[i >> 1] >> ((i & 1) << 2)) & _MAX_COUNT)

    def halve(self) -> None:
        """Age every counter by half (TinyLFU's reset)."""
        self._table = bytearray(self._table.translate(_HALVE))
        # Halving also halves the additions already counted, as Caffeine does; otherwise the next
        # reset would come twice as fast as the sample size says.
        self._additions //= 2

    def clear(self) -> None:
        """Forget everything."""
        self._table = bytearray(len(self._table))
        self._additions = 0
