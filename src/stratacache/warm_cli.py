"""``strata warm LOG.jsonl``: pre-warm a deployment's cache from a log of requests.

A thin shell over :mod:`stratacache.llm.warm`: it loads the same settings as ``strata serve`` (config
file, ``STRATA_*`` environment, flags), builds the same cache without a proxy
(:func:`stratacache.llm.factory.build_cache`), and shows a progress bar. Registered in
:mod:`stratacache.cli` as ``cli.add_command(warm_command, name="warm")``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

__all__ = ["warm_command"]

_ROUTES = ("chat.completions", "completions", "embeddings", "responses")


@click.command("warm")
@click.argument("log", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The TOML settings file the proxy runs with.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the SQLite store and the signing key live.  [default: ./.strata]",
)
@click.option("--upstream", default=None, help="OpenAI-compatible base URL to fetch answers from.")
@click.option("--redis", "redis_url", default=None, help="redis:// URL of the shared tier.")
@click.option("--chain", default=None, help="Tiers, fastest first (as for serve).")
@click.option(
    "--route",
    type=click.Choice(_ROUTES),
    default=None,
    help="The route of lines that do not name one.  [default: inferred from the body]",
)
@click.option(
    "--api-key",
    envvar="OPENAI_API_KEY",
    default=None,
    help="Credential sent upstream; it also decides the tenant the entries belong to "
    "(default: $OPENAI_API_KEY).",
)
@click.option(
    "--header",
    "header_lines",
    multiple=True,
    metavar="'NAME: VALUE'",
    help="A header for every request (repeatable), e.g. 'X-Cache-Tags: faq'.",
)
@click.option("--concurrency", type=click.IntRange(1, 1024), default=8, show_default=True)
@click.option(
    "--import-only",
    is_flag=True,
    help="Never call the upstream: only import lines that carry a response.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Report how many answers would be stored, and why not the rest; change nothing.",
)
def warm_command(
    *,
    log: Path,
    config_file: Path | None,
    data_dir: Path | None,
    upstream: str | None,
    redis_url: str | None,
    chain: str | None,
    route: str | None,
    api_key: str | None,
    header_lines: tuple[str, ...],
    concurrency: int,
    import_only: bool,
    dry_run: bool,
) -> None:
    """Replay LOG.jsonl (request bodies, or request+response pairs) into the cache.

    Lines with a "response" are imported without calling the upstream; the others are sent
    upstream. Only requests the caching policy would store are sent.
    """
    from rich.console import Console

    from stratacache.config import Settings
    from stratacache.errors import StrataError
    from stratacache.llm.keys import Route

    overrides: dict[str, Any] = {
        "data_dir": data_dir,
        "upstream": upstream,
        "redis_url": redis_url,
        "chain": chain,
    }
    try:
        settings = Settings.load(config_file=config_file, env=os.environ, overrides=overrides)
    except StrataError as exc:
        raise click.ClickException(str(exc)) from None
    headers: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise click.BadParameter(f"expected 'NAME: VALUE', got {line!r}", param_hint="--header")
        headers[name.strip()] = value.strip()
    if api_key and not any(k.lower() == "authorization" for k in headers):
        headers["Authorization"] = f"Bearer {api_key}"
    console = Console(stderr=True)
    try:
        report = _run(
            settings,
            log,
            route=Route(route) if route else None,
            headers=headers,
            concurrency=concurrency,
            fetch=not import_only,
            dry_run=dry_run,
            console=console,
        )
    except (StrataError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    _show(report, Console())


def _run(
    settings: Any,
    log: Path,
    *,
    route: Any,
    headers: dict[str, str],
    concurrency: int,
    fetch: bool,
    dry_run: bool,
    console: Any,
) -> Any:
    import asyncio

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from stratacache.llm import warm

    total = _count_lines(log)
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("stored {task.fields[stored]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    with progress, log.open(encoding="utf-8") as lines:
        task = progress.add_task("dry run" if dry_run else "warming", total=total, stored=0)
        stored = 0

        def advance(outcome: warm.WarmOutcome) -> None:
            nonlocal stored
            stored += outcome.outcome == warm.STORED
            progress.update(task, advance=1, stored=stored)

        entries = warm.read_log(lines, route=route, headers=headers)
        if dry_run:
            return warm.dry_run(
                entries, settings.routes, settings.cache_rules, fetch=fetch, on_outcome=advance
            )
        return asyncio.run(_warm(settings, entries, concurrency, fetch, advance))


async def _warm(settings: Any, entries: Any, concurrency: int, fetch: bool, advance: Any) -> Any:
    from stratacache.llm import warm
    from stratacache.llm.factory import build_cache
    from stratacache.proxy.upstream import HTTPUpstream, UpstreamTimeouts

    upstream = HTTPUpstream(
        settings.upstream,
        timeouts=UpstreamTimeouts(
            connect=settings.upstream_connect_timeout, read=settings.upstream_timeout
        ),
        max_connections=min(concurrency, settings.upstream_max_connections),
    )
    try:
        cache = build_cache(settings, upstream)
        try:
            return await warm.warm(
                cache, entries, concurrency=concurrency, fetch=fetch, on_outcome=advance
            )
        finally:
            await cache.aclose()
            await cache.tiers.close()
    finally:
        await upstream.aclose()


def _count_lines(path: Path) -> int:
    count = 0
    with path.open("rb") as f:
        for line in f:
            count += bool(line.strip())
    return count


def _show(report: Any, console: Any) -> None:
    from rich.table import Table

    from stratacache.llm.warm import summarize

    table = Table(title="strata warm (dry run)" if report.dry_run else "strata warm")
    table.add_column("")
    table.add_column("requests", justify="right")
    for label, count in summarize(report):
        table.add_row(label, str(count))
    console.print(table)
    for example in report.examples:
        console.print(f"line {example.line}: {example.reason}: {example.detail}")
