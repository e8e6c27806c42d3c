"""Runs the tier contract (``contract.py``) against every implementation in ``conftest.py``."""

from __future__ import annotations

from .contract import TierContract


class TestTierContract(TierContract):
    """The contract, once per ``tier`` parameter: memory, sqlite, memory+sqlite."""
