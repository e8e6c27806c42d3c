"""The admin API: token required, disabled without one."""

from __future__ import annotations

import httpx
import pytest

from .conftest import ADMIN_TOKEN, RunningProxy, StartProxy
from .fake_upstream import FakeUpstream
from .helpers import CHAT, client

BEARER = {"authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/admin/keys/some-key"),
        ("DELETE", "/admin/namespaces/default"),
        ("DELETE", "/admin/tags/t"),
        ("POST", "/admin/flush"),
    ],
)
def test_admin_needs_the_token(http: httpx.Client, method: str, path: str) -> None:
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": ADMIN_TOKEN}):
        response = http.request(method, path, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_admin_token"
    assert http.request(method, path, headers=BEARER).status_code == 200


def test_admin_is_disabled_without_a_token(start_proxy: StartProxy) -> None:
    proxy = start_proxy(admin_token=None)
    with httpx.Client(base_url=proxy.root) as http:
        response = http.post("/admin/flush", headers=BEARER)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "admin_disabled"


def test_delete_a_key(proxy: RunningProxy, fake: FakeUpstream, http: httpx.Client) -> None:
    sdk = client(proxy)
    key = sdk.chat.completions.with_raw_response.create(**CHAT).headers["x-cache-key"]
    assert http.delete(f"/admin/keys/{key}", headers=BEARER).json() == {"deleted": 1}
    assert http.delete(f"/admin/keys/{key}", headers=BEARER).json() == {"deleted": 0}
    assert sdk.chat.completions.with_raw_response.create(**CHAT).headers["x-cache"] == "MISS"


def test_flush(proxy: RunningProxy, fake: FakeUpstream, http: httpx.Client) -> None:
    sdk = client(proxy)
    sdk.chat.completions.create(**CHAT)
    sdk.embeddings.create(model="text-embedding-3-small", input="x")
    assert http.post("/admin/flush", headers=BEARER).json() == {"flushed": True}
    assert sdk.chat.completions.with_raw_response.create(**CHAT).headers["x-cache"] == "MISS"
    assert fake.calls["/v1/chat/completions"] == 2


def test_the_events_webhook_invalidates_by_rule(
    start_proxy: StartProxy, fake: FakeUpstream
) -> None:
    from stratacache.llm.events import EventRule
    from stratacache.llm.rules import CacheRules

    rules = CacheRules(
        events=(
            EventRule("product_updated", tags=("product:{0}",)),
            EventRule("catalog_rebuilt", namespaces=("catalog",)),
        )
    )
    proxy = start_proxy(cache_rules=rules)
    tagged = {"x-cache-tags": "product:123"}
    with client(proxy, default_headers=tagged) as sdk, httpx.Client(base_url=proxy.root) as http:
        sdk.chat.completions.create(**CHAT)
        assert sdk.chat.completions.with_raw_response.create(**CHAT).headers["x-cache"] == "HIT"

        text = {**BEARER, "content-type": "text/plain"}
        response = http.post(
            "/admin/events", content=b"product_updated 123\nnoise 1\n", headers=text
        )
        assert response.status_code == 200
        assert response.json() == {
            "events": 2,
            "tags": ["product:123"],
            "namespaces": [],
            "unmatched": ["noise"],
            "deleted": 1,
        }
        assert sdk.chat.completions.with_raw_response.create(**CHAT).headers["x-cache"] == "MISS"

        as_json = http.post(
            "/admin/events", json=[{"event": "catalog_rebuilt"}], headers=BEARER
        ).json()
        assert (as_json["namespaces"], as_json["deleted"]) == (["catalog"], 0)

        unknown = http.post("/admin/events", content=b"prodcut_updated 1", headers=text)
        assert unknown.status_code == 422
        assert unknown.json()["error"]["code"] == "unknown_event"
        for bad in (b"", b"product_updated", b"bad/name 1"):
            assert http.post("/admin/events", content=bad, headers=text).status_code == 400
        denied = http.post("/admin/events", content=b"product_updated 123")
        assert denied.status_code == 401
    assert fake.calls["/v1/chat/completions"] == 2
