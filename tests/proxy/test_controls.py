"""Per-request cache controls: Cache-Control, X-Cache-* headers and the body's ``cache`` object."""

from __future__ import annotations

import httpx

from .conftest import ADMIN_TOKEN, RunningProxy
from .fake_upstream import FakeUpstream
from .helpers import CHAT, client


def xcache(proxy: RunningProxy, **options: object) -> str:
    response = client(proxy).chat.completions.with_raw_response.create(**CHAT, **options)  # type: ignore[arg-type]
    return response.headers["x-cache"]


def test_no_store_answers_but_does_not_store(proxy: RunningProxy, fake: FakeUpstream) -> None:
    assert xcache(proxy, extra_headers={"Cache-Control": "no-store"}) == "MISS"
    assert xcache(proxy) == "MISS"
    assert xcache(proxy) == "HIT"
    assert fake.calls["/v1/chat/completions"] == 2


def test_no_cache_skips_reading_but_stores_the_fresh_answer(
    proxy: RunningProxy, fake: FakeUpstream
) -> None:
    sdk = client(proxy)
    old = sdk.chat.completions.create(**CHAT)
    fresh = sdk.chat.completions.with_raw_response.create(
        **CHAT, extra_headers={"Cache-Control": "no-cache"}
    )
    assert fresh.headers["x-cache"] == "BYPASS"
    assert fresh.parse().id != old.id
    assert sdk.chat.completions.create(**CHAT).id == fresh.parse().id
    assert fake.calls["/v1/chat/completions"] == 2


def test_max_age_accepts_only_fresher_entries(proxy: RunningProxy, fake: FakeUpstream) -> None:
    assert xcache(proxy) == "MISS"
    proxy.clock.advance(100)
    assert xcache(proxy, extra_headers={"Cache-Control": "max-age=500"}) == "HIT"
    assert xcache(proxy, extra_headers={"Cache-Control": "max-age=50"}) == "MISS"
    # The fresh answer replaced the old one: it is young enough now.
    assert xcache(proxy, extra_headers={"Cache-Control": "max-age=50"}) == "HIT"
    assert fake.calls["/v1/chat/completions"] == 2


def test_ttl_header_expires_the_entry(proxy: RunningProxy, fake: FakeUpstream) -> None:
    assert xcache(proxy, extra_headers={"X-Cache-TTL": "60"}) == "MISS"
    proxy.clock.advance(59)
    assert xcache(proxy) == "HIT"
    proxy.clock.advance(2)
    assert xcache(proxy) == "MISS"
    assert fake.calls["/v1/chat/completions"] == 2


def test_ttl_in_the_body(proxy: RunningProxy, fake: FakeUpstream) -> None:
    assert xcache(proxy, extra_body={"cache": {"ttl": 10}}) == "MISS"
    proxy.clock.advance(11)
    assert xcache(proxy) == "MISS"


def test_namespaces_are_separate(proxy: RunningProxy, fake: FakeUpstream) -> None:
    docs = {"extra_headers": {"X-Cache-Namespace": "docs"}}
    assert xcache(proxy, **docs) == "MISS"
    assert xcache(proxy, **docs) == "HIT"
    assert xcache(proxy) == "MISS"
    assert xcache(proxy, extra_body={"cache": {"namespace": "docs"}}) == "HIT"
    with httpx.Client(base_url=proxy.root) as http:
        gone = http.delete(
            "/admin/namespaces/docs", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
        )
    assert gone.json() == {"deleted": 1}
    assert xcache(proxy, **docs) == "MISS"
    assert xcache(proxy) == "HIT"


def test_tags_invalidate(proxy: RunningProxy, fake: FakeUpstream) -> None:
    assert xcache(proxy, extra_headers={"X-Cache-Tags": "product:1, faq"}) == "MISS"
    assert xcache(proxy) == "HIT"
    with httpx.Client(base_url=proxy.root) as http:
        gone = http.delete("/admin/tags/faq", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
    assert gone.json() == {"deleted": 1}
    assert xcache(proxy) == "MISS"


def test_a_bad_control_is_a_clean_400(proxy: RunningProxy, fake: FakeUpstream) -> None:
    import openai
    import pytest

    sdk = client(proxy)
    for options in (
        {"extra_headers": {"X-Cache-TTL": "soon"}},
        {"extra_body": {"cache": {"ttl": 5, "tll": 3}}},
        {"extra_headers": {"X-Cache-Namespace": "a/b"}},
    ):
        with pytest.raises(openai.BadRequestError) as caught:
            sdk.chat.completions.create(**CHAT, **options)  # type: ignore[arg-type]
        assert caught.value.status_code == 400
        assert caught.value.code == "invalid_request"
    assert fake.calls["/v1/chat/completions"] == 0
    assert xcache(proxy) == "MISS"
