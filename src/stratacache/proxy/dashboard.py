"""``GET /dashboard``: one self-contained HTML page that polls ``GET /stats`` and draws it.

The page has no external assets (no CDN, fonts or images; its CSS and JavaScript are inline) and
its Content-Security-Policy forbids loading any, so it works on an air-gapped host and leaks
nothing. It reads ``stats`` relative to its own URL, so it keeps working behind a path prefix, every
``interval`` seconds (``?interval=5``; default 2) while the tab is visible.

What it shows, each only when ``/stats`` carries it: requests and hit rate by outcome, tier and
route; latency summaries (count, mean, p50, p99); dollars and tokens saved; coalesced requests;
verification failures; upstream errors and reasons for not storing; in-flight requests; tier
health; and any other section ``/stats`` grows (``semantic``, ``shadow`` …) as a flattened table,
so a new counter appears here without a change to this page.

The formatting functions live in one ``<script>`` block with no DOM access (``fmt``), so a test can
run them alone; the page's rendering is tested in a headless browser against a live proxy.
"""

from __future__ import annotations

from typing import Final

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

__all__ = ["DASHBOARD_HTML", "dashboard_route"]

_CSP: Final = (
    "default-src 'none'; connect-src 'self'; script-src 'unsafe-inline'; "
    "style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"
)

_FORMAT_JS: Final = r"""
// Pure formatting: values in, strings out. No DOM here (a test runs this block alone).
const fmt = {
  count(n) {
    if (typeof n !== "number" || !isFinite(n)) return "\u2013";
    return Math.round(n).toLocaleString("en-US");
  },
  percent(x) {
    if (typeof x !== "number" || !isFinite(x)) return "\u2013";
    return (100 * x).toFixed(1) + "%";
  },
  dollars(x) {
    if (typeof x !== "number" || !isFinite(x)) return "\u2013";
    if (x !== 0 && Math.abs(x) < 0.01) return "$" + x.toPrecision(2);
    return "$" + x.toLocaleString("en-US", {minimumFractionDigits: 2, maximumFractionDigits: 2});
  },
  seconds(s) {
    if (typeof s !== "number" || !isFinite(s)) return "\u2013";
    if (s < 1e-3) return (s * 1e6).toFixed(0) + " µs";
    if (s < 1) return (s * 1e3).toFixed(s < 0.01 ? 2 : 1) + " ms";
    return s.toFixed(2) + " s";
  },
  value(key, v) {
    // A number under a key that names its unit is shown in that unit.
    if (typeof v === "boolean") return v ? "yes" : "no";
    if (typeof v !== "number") return v === null || v === undefined ? "\u2013" : String(v);
    if (/dollars/.test(key)) return fmt.dollars(v);
    if (/(^|_)(rate|ratio|share)$/.test(key)) return fmt.percent(v);
    if (/seconds|latency/.test(key)) return fmt.seconds(v);
    return Number.isInteger(v) ? fmt.count(v) : v.toPrecision(4);
  },
  flatten(obj, prefix) {
    // {"a": {"b": 1}} -> [["a.b", 1]]; arrays are shown whole.
    const rows = [];
    for (const [k, v] of Object.entries(obj || {})) {
      const key = prefix ? prefix + "." + k : k;
      if (v !== null && typeof v === "object" && !Array.isArray(v)) rows.push(...fmt.flatten(v, key));
      else rows.push([key, Array.isArray(v) ? JSON.stringify(v) : v]);
    }
    return rows;
  },
  shares(counts) {
    // {"hit": 3, "miss": 1} -> [["hit", 3, 0.75], ["miss", 1, 0.25]], largest first.
    const total = Object.values(counts || {}).reduce((a, b) => a + b, 0);
    return Object.entries(counts || {})
      .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))
      .map(([k, v]) => [k, v, total ? v / total : 0]);
  },
};
"""

# Sections of /stats drawn by a dedicated panel; anything else gets a generic table.
_KNOWN: Final = (
    "requests hit_rate latency_seconds tokens_served_from_cache dollars_saved coalesced_requests "
    "verification_failures upstream_errors not_stored ledger tiers in_flight"
)

_PAGE_JS: Final = (
    r"""
const KNOWN = new Set("""
    + repr(_KNOWN.split())
    + r""");
const params = new URLSearchParams(location.search);
const interval = Math.max(0.5, Number(params.get("interval")) || 2) * 1000;
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : String(c));
  return node;
}

function table(id, head, rows) {
  const body = rows.length
    ? rows.map((r) => el("tr", {}, ...r.map((c) => el("td", {}, c))))
    : [el("tr", {}, el("td", {colspan: head.length, class: "muted"}, "none yet"))];
  $(id).replaceChildren(el("tr", {}, ...head.map((h) => el("th", {}, h))), ...body);
}

function bar(share) {
  const b = el("span", {class: "bar"});
  b.style.width = (100 * share).toFixed(1) + "%";
  return el("span", {class: "track"}, b);
}

function shareRows(counts) {
  return fmt.shares(counts).map(([k, v, s]) => [k, fmt.count(v), fmt.percent(s), bar(s)]);
}

function render(s) {
  const req = s.requests || {};
  const tokens = s.tokens_served_from_cache || {};
  const ledger = s.ledger || {};
  $("total").textContent = fmt.count(req.total);
  $("hit-rate").textContent = fmt.percent(s.hit_rate);
  $("dollars-saved").textContent = fmt.dollars(s.dollars_saved);
  $("tokens-saved").textContent =
    fmt.count((tokens.input || 0) + (tokens.output || 0)) +
    " (" + fmt.count(tokens.input) + " in / " + fmt.count(tokens.output) + " out)";
  $("coalesced").textContent = fmt.count(s.coalesced_requests);
  $("verification").textContent = fmt.count(s.verification_failures);
  $("verification").closest(".card").classList.toggle("bad", s.verification_failures > 0);
  $("in-flight").textContent = fmt.count(s.in_flight);
  $("spent").textContent = fmt.dollars(ledger.spent_dollars);
  table("outcomes", ["outcome", "requests", "share", ""], shareRows(req.by_outcome));
  table("by-tier", ["tier", "hits", "share", ""], shareRows(req.by_tier));
  table("by-route", ["route", "requests", "share", ""], shareRows(req.by_route));
  table("latency", ["", "count", "mean", "p50", "p99"],
    Object.entries(s.latency_seconds || {}).map(([k, h]) =>
      [k, fmt.count(h.count), fmt.seconds(h.mean), fmt.seconds(h.p50), fmt.seconds(h.p99)]));
  table("health", ["tier", "state"], Object.entries(s.tiers || {}).map(([k, up]) =>
    [k, el("span", {class: up ? "up" : "down"}, up ? "up" : "down")]));
  table("errors", ["kind", "count"], [
    ...Object.entries(s.upstream_errors || {}).map(([k, v]) => ["upstream " + k, fmt.count(v)]),
    ...Object.entries(s.not_stored || {}).map(([k, v]) => ["not stored: " + k, fmt.count(v)]),
  ]);
  table("models", ["model", "upstream calls", "cache hits", "spent", "saved"],
    Object.entries(ledger.by_model || {}).map(([m, t]) => [m, fmt.count(t.upstream_requests),
      fmt.count(t.cache_hits), fmt.dollars(t.spent_dollars),
      fmt.dollars((t.response_cache_saved_dollars || 0) + (t.prompt_cache_saved_dollars || 0))]));
  const extra = Object.fromEntries(Object.entries(s).filter(([k]) => !KNOWN.has(k)));
  $("extra-panel").hidden = Object.keys(extra).length === 0;
  table("extra", ["counter", "value"], fmt.flatten(extra).map(([k, v]) => [k, fmt.value(k, v)]));
}

async function poll() {
  if (!document.hidden) {
    try {
      const response = await fetch("stats", {cache: "no-store"});
      if (!response.ok) throw new Error("HTTP " + response.status);
      render(await response.json());
      $("status").textContent = "updated " + new Date().toLocaleTimeString();
      $("status").className = "ok";
    } catch (e) {
      $("status").textContent = "cannot read /stats: " + e.message;
      $("status").className = "down";
    }
  }
  setTimeout(poll, interval);
}
poll();
"""
)

_CSS: Final = """
:root { --fg: #1d2329; --muted: #6b7580; --line: #e3e7eb; --accent: #2f6fde; --bad: #c62828;
        --good: #2e7d32; --bg: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; padding: 1.5rem; font: 14px/1.4 system-ui, sans-serif; color: var(--fg);
       background: var(--bg); }
header { display: flex; align-items: baseline; gap: 1rem; margin-bottom: 1rem; }
h1 { font-size: 1.3rem; margin: 0; }
h2 { font-size: .85rem; text-transform: uppercase; letter-spacing: .04em; color: var(--muted);
     margin: 0 0 .5rem; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(11rem, 1fr)); gap: .75rem;
         margin-bottom: 1rem; }
.card, section { background: #fff; border: 1px solid var(--line); border-radius: 6px;
                 padding: .75rem 1rem; }
.card .label { color: var(--muted); font-size: .8rem; }
.card .value { font-size: 1.4rem; font-variant-numeric: tabular-nums; }
.card.bad .value { color: var(--bad); }
.panels { display: grid; grid-template-columns: repeat(auto-fill, minmax(24rem, 1fr)); gap: .75rem; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: .2rem .4rem; border-bottom: 1px solid var(--line); }
th { color: var(--muted); font-weight: 500; }
td:first-child { white-space: nowrap; }
.track { display: inline-block; width: 6rem; height: .5rem; background: var(--line);
         border-radius: 3px; vertical-align: middle; }
.bar { display: block; height: 100%; background: var(--accent); border-radius: 3px; }
.up, .ok { color: var(--good); } .down { color: var(--bad); } .muted { color: var(--muted); }
"""

_CARDS: Final = (
    ("total", "requests"),
    ("hit-rate", "hit rate"),
    ("dollars-saved", "dollars saved"),
    ("spent", "dollars spent upstream"),
    ("tokens-saved", "tokens served from cache"),
    ("coalesced", "coalesced requests"),
    ("verification", "verification failures"),
    ("in-flight", "in flight"),
)

_PANELS: Final = (
    ("outcomes", "requests by outcome"),
    ("by-tier", "hits by tier"),
    ("by-route", "requests by route"),
    ("latency", "latency"),
    ("health", "tier health"),
    ("errors", "errors and skipped stores"),
    ("models", "by model"),
)

DASHBOARD_HTML: Final = (
    "<!doctype html>\n<html lang=en>\n<head>\n<meta charset=utf-8>\n"
    '<meta name=viewport content="width=device-width, initial-scale=1">\n'
    "<title>stratacache dashboard</title>\n<style>"
    + _CSS
    + "</style>\n</head>\n<body>\n<header><h1>stratacache</h1>"
    + "<span id=status class=muted>loading…</span></header>\n<div class=cards>\n"
    + "".join(
        f"<div class=card><div class=label>{label}</div><div class=value id={id}>&ndash;</div></div>\n"
        for id, label in _CARDS
    )
    + "</div>\n<div class=panels>\n"
    + "".join(
        f"<section><h2>{title}</h2><table id={id}></table></section>\n" for id, title in _PANELS
    )
    + "<section id=extra-panel hidden><h2>semantic, shadow and other counters</h2>"
    + "<table id=extra></table></section>\n"
    + "</div>\n<script id=fmt>"
    + _FORMAT_JS
    + "</script>\n<script>"
    + _PAGE_JS
    + "</script>\n</body>\n</html>\n"
)
"""The whole page: HTML with its CSS and JavaScript inline."""


async def _dashboard(request: Request) -> Response:
    return HTMLResponse(
        DASHBOARD_HTML,
        headers={"content-security-policy": _CSP, "cache-control": "no-store"},
    )


def dashboard_route() -> Route:
    """The ``GET /dashboard`` route, to add to the proxy's routes."""
    return Route("/dashboard", _dashboard, methods=["GET"])
