"""The L0 engine: an in-process W-TinyLFU store with TTLs and a byte budget.

Pure Python and sans-IO: it imports nothing from the rest of stratacache but its errors, and no
third-party package.
"""

from __future__ import annotations

from stratacache.engine.sketch import FrequencySketch
from stratacache.engine.store import (
    Key,
    PolicyState,
    RemovalCause,
    Store,
    StoreStats,
    default_weigher,
)
from stratacache.engine.timerwheel import TimerWheel

__all__ = [
    "FrequencySketch",
    "Key",
    "PolicyState",
    "RemovalCause",
    "Store",
    "StoreStats",
    "TimerWheel",
    "default_weigher",
]
