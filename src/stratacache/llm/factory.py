"""Build an :class:`~stratacache.llm.cache.LLMCache` from a deployment's settings, without a proxy.

``strata serve`` and the tools that work on the same store (``strata warm``, a LangChain cache
opened on a deployment's config) must agree on everything that decides whether a stored answer
matches: the tiers, the signing key and algorithm, the tenant secret derived from that key, the key
version and the route policies. This module is that one place for code that is not the proxy: the
caller brings the upstream (an HTTP client, or recorded answers) and the cache is otherwise what the
proxy would build from the same :class:`~stratacache.config.Settings`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from stratacache.llm.cache import CacheObserver, LLMCache, Upstream, derive_tenant_secret
from stratacache.llm.records import (
    Ed25519Signer,
    HmacSigner,
    MLDSASigner,
    RecordCodec,
    Signer,
    load_or_create_key,
)
from stratacache.tiers.base import Clock

if TYPE_CHECKING:
    from stratacache.config import Settings
    from stratacache.llm.semantic import SemanticLayer
    from stratacache.tiers.chain import TierChain

__all__ = ["build_cache", "signer_for"]


def signer_for(settings: Settings) -> tuple[Signer, bytes]:
    """The record signer ``settings`` name and the key it signs with (created on first use).

    Every instance sharing a durable or Redis tier must share this key file: a record signed with
    another key fails verification and is treated as a miss (and deleted).
    """
    key = load_or_create_key(settings.key_file)
    if settings.signing == "hmac":
        return HmacSigner(key), key
    if settings.signing == "ed25519":
        return Ed25519Signer(key), key
    return MLDSASigner(key), key


def build_cache(
    settings: Settings,
    upstream: Upstream,
    *,
    clock: Clock | None = None,
    observer: CacheObserver | None = None,
    tiers: TierChain | None = None,
    semantic: SemanticLayer | None = None,
) -> LLMCache:
    """The :class:`LLMCache` ``strata serve`` would build from ``settings``, over ``upstream``.

    Creates ``settings.data_dir`` and the signing key if they are missing. ``tiers`` defaults to
    the chain ``settings`` describe; the proxy passes its own because its semantic layer (built on
    the same tiers) must exist before the cache. The caller owns the result: ``await
    cache.aclose()`` then ``await cache.tiers.close()`` when done.
    """
    from stratacache.tiers.factory import build_chain

    now = clock or time.time
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    signer, key = signer_for(settings)
    if tiers is None:
        tiers = build_chain(settings, clock=now)
    return LLMCache(
        tiers,
        RecordCodec(signer),
        upstream,
        tenant_secret=derive_tenant_secret(key),
        share_across_tenants=settings.share_across_tenants,
        routes=settings.routes,
        version=settings.key_version,
        observer=observer,
        clock=now,
        stream_usage=settings.stream_usage,
        rules=settings.cache_rules,
        semantic=semantic,
    )
