"""The embedded durable store: restarts keep hits, tampered records are refused, stale serving."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import openai
import pytest

from stratacache.llm.cache import RoutePolicy
from stratacache.llm.keys import Route

from .conftest import RunningProxy, StartProxy
from .fake_upstream import FakeUpstream
from .helpers import CHAT, client, wait_until


def test_a_restart_keeps_hits(start_proxy: StartProxy, fake: FakeUpstream, tmp_path: Path) -> None:
    first = start_proxy(data_dir=tmp_path / "data")
    original = client(first).chat.completions.create(**CHAT)
    first.stop()
    second = start_proxy(data_dir=tmp_path / "data")
    hit = client(second).chat.completions.with_raw_response.create(**CHAT)
    assert hit.headers["x-cache"] == "HIT"
    assert hit.headers["x-cache-tier"] == "sqlite"
    assert hit.parse().model_dump() == original.model_dump()
    # Promoted into the memory tier on the way.
    again = client(second).chat.completions.with_raw_response.create(**CHAT)
    assert again.headers["x-cache-tier"] == "memory"
    assert fake.calls["/v1/chat/completions"] == 1
    assert (tmp_path / "data" / "signing.key").stat().st_size == 32


def tamper(database: Path, old: bytes, new: bytes) -> int:
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT key, value FROM entries").fetchall()
        changed = 0
        for key, value in rows:
            if old in value:
                db.execute(
                    "UPDATE entries SET value = ? WHERE key = ?", (value.replace(old, new, 1), key)
                )
                changed += 1
    return changed


def test_a_tampered_record_is_not_served(
    start_proxy: StartProxy, fake: FakeUpstream, tmp_path: Path
) -> None:
    first = start_proxy(data_dir=tmp_path / "data")
    original = client(first).chat.completions.create(**CHAT)
    first.stop()
    assert tamper(tmp_path / "data" / "cache.db", b"Answer #", b"Bnswer #") == 1
    second = start_proxy(data_dir=tmp_path / "data")
    sdk = client(second)
    served = sdk.chat.completions.with_raw_response.create(**CHAT)
    assert served.headers["x-cache"] == "MISS"
    assert "Bnswer" not in (served.parse().choices[0].message.content or "")
    assert served.parse().id != original.id
    assert second.metric("strata_verification_failures_total", reason="signature") == 1
    assert fake.calls["/v1/chat/completions"] == 2
    # The bad record was deleted and replaced by the fresh answer.
    assert sdk.chat.completions.with_raw_response.create(**CHAT).headers["x-cache"] == "HIT"
    text = httpx.get(f"{second.root}/metrics").text
    assert 'strata_verification_failures_total{reason="signature",tier="sqlite"} 1.0' in text


def test_garbage_in_the_store_is_a_counted_miss(
    start_proxy: StartProxy, fake: FakeUpstream, tmp_path: Path
) -> None:
    first = start_proxy(data_dir=tmp_path / "data")
    client(first).chat.completions.create(**CHAT)
    first.stop()
    with sqlite3.connect(tmp_path / "data" / "cache.db") as db:
        db.execute("UPDATE entries SET value = ?", (b"not a record at all",))
    second = start_proxy(data_dir=tmp_path / "data")
    served = client(second).chat.completions.with_raw_response.create(**CHAT)
    assert served.headers["x-cache"] == "MISS"
    assert second.metric("strata_verification_failures_total", reason="format") == 1


def test_records_signed_with_another_key_are_refused(
    start_proxy: StartProxy, fake: FakeUpstream, tmp_path: Path
) -> None:
    first = start_proxy(data_dir=tmp_path / "data")
    client(first).chat.completions.create(**CHAT)
    first.stop()
    (tmp_path / "data" / "signing.key").write_bytes(b"k" * 32)
    second = start_proxy(data_dir=tmp_path / "data")
    served = client(second).chat.completions.with_raw_response.create(**CHAT)
    assert served.headers["x-cache"] == "MISS"
    # The tenant id is derived from the key too, so the old record is not even found: a new
    # key starts a new cache rather than trusting the old one.
    assert fake.calls["/v1/chat/completions"] == 2


@pytest.mark.parametrize("signing", ["ed25519", "ml-dsa-65"])
def test_other_signatures(start_proxy: StartProxy, fake: FakeUpstream, signing: str) -> None:
    from stratacache.llm.records import mldsa_available

    if signing == "ml-dsa-65" and not mldsa_available():
        pytest.skip("this cryptography build has no ML-DSA")
    proxy = start_proxy(signing=signing)
    client(proxy).chat.completions.create(**CHAT)
    assert (
        client(proxy).chat.completions.with_raw_response.create(**CHAT).headers["x-cache"] == "HIT"
    )


def test_stale_while_revalidate(start_proxy: StartProxy, fake: FakeUpstream) -> None:
    proxy = start_proxy(routes={Route.CHAT: RoutePolicy(ttl=10, stale_while_revalidate=100)})
    sdk = client(proxy)
    original = sdk.chat.completions.create(**CHAT)
    proxy.clock.advance(20)
    stale = sdk.chat.completions.with_raw_response.create(**CHAT)
    assert stale.headers["x-cache"] == "STALE"
    assert stale.parse().id == original.id
    # One background refresh replaces it.
    wait_until(lambda: fake.calls["/v1/chat/completions"] == 2 and proxy.proxy.cache.in_flight == 0)
    fresh = sdk.chat.completions.with_raw_response.create(**CHAT)
    assert fresh.headers["x-cache"] == "HIT"
    assert fresh.parse().id != original.id
    proxy.clock.advance(200)  # beyond the stale window: a plain miss
    assert sdk.chat.completions.with_raw_response.create(**CHAT).headers["x-cache"] == "MISS"


def test_stale_if_error(start_proxy: StartProxy, fake: FakeUpstream) -> None:
    proxy = start_proxy(routes={Route.CHAT: RoutePolicy(ttl=10, stale_if_error=100)})
    sdk = client(proxy)
    original = sdk.chat.completions.create(**CHAT)
    proxy.clock.advance(20)
    fake.fail_status = 500
    stale = sdk.chat.completions.with_raw_response.create(**CHAT)
    assert stale.headers["x-cache"] == "STALE"
    assert stale.parse().id == original.id
    fake.fail_status = None
    fresh = sdk.chat.completions.with_raw_response.create(**CHAT)
    assert fresh.headers["x-cache"] == "MISS"
    assert fresh.parse().id != original.id


def test_stale_is_off_by_default(proxy: RunningProxy, fake: FakeUpstream) -> None:
    sdk = client(proxy)
    sdk.chat.completions.create(**CHAT, extra_headers={"X-Cache-TTL": "10"})
    proxy.clock.advance(20)
    fake.fail_status = 500
    with pytest.raises(openai.InternalServerError):
        sdk.chat.completions.create(**CHAT)


def test_mode_never_passes_everything_through(start_proxy: StartProxy, fake: FakeUpstream) -> None:
    from stratacache.llm.policy import AdmissionMode

    proxy = start_proxy(routes={Route.CHAT: RoutePolicy(mode=AdmissionMode.NEVER)})
    sdk = client(proxy)
    for _ in range(2):
        assert sdk.chat.completions.with_raw_response.create(**CHAT).headers["x-cache"] == "BYPASS"
    assert fake.calls["/v1/chat/completions"] == 2


def test_mode_always_caches_sampled_requests(start_proxy: StartProxy, fake: FakeUpstream) -> None:
    from stratacache.llm.policy import AdmissionMode

    proxy = start_proxy(routes={Route.CHAT: RoutePolicy(mode=AdmissionMode.ALWAYS)})
    sdk = client(proxy)
    request = {**CHAT, "temperature": 0.9}
    sdk.chat.completions.create(**request)
    assert sdk.chat.completions.with_raw_response.create(**request).headers["x-cache"] == "HIT"
