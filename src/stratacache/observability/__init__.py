"""Observability: the metrics registry and the price table behind "dollars saved"."""

from __future__ import annotations

from stratacache.observability.pricing import DEFAULT_PRICES, Price, PriceTable, token_counts

__all__ = ["DEFAULT_PRICES", "Price", "PriceTable", "token_counts"]
