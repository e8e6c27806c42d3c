"""The ``strata`` command line: each subcommand is a thin shell over the library."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from stratacache import __version__
from stratacache.kv.cli import kv_demo_command
from stratacache.prefix.cli import lint_command
from stratacache.resp.cli import resp_command
from stratacache.semantic.cli import calibrate_command, eval_pairs_command
from stratacache.warm_cli import warm_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="strata")
def cli() -> None:
    """stratacache: a layered cache for LLM applications."""


@cli.command()
@click.option("--host", default=None, help="Address to bind.  [default: 127.0.0.1]")
@click.option("--port", type=int, default=None, help="Port to bind.  [default: 8080]")
@click.option(
    "--upstream",
    default=None,
    help="OpenAI-compatible base URL misses go to.  [default: $OPENAI_BASE_URL or OpenAI]",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the SQLite store and the signing key live.  [default: ./.strata]",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A TOML settings file.",
)
@click.option(
    "--admin-token",
    default=None,
    help="Bearer token for the admin endpoints (or STRATA_ADMIN_TOKEN); unset: disabled.",
)
@click.option(
    "--redis",
    "redis_url",
    default=None,
    help="redis:// URL of a Redis shared by several instances (or STRATA_REDIS_URL).",
)
@click.option(
    "--chain",
    default=None,
    help="Tiers, fastest first: memory,sqlite | memory,redis | memory,sqlite,redis.",
)
@click.option(
    "--semantic/--no-semantic",
    default=None,
    help="Answer paraphrases too.  [default: on when the 'semantic' extra is installed]",
)
@click.option(
    "--semantic-shadow",
    is_flag=True,
    default=None,
    help="Only observe would-be semantic hits (see /stats for a recommended threshold).",
)
@click.option("--log-level", default=None, help="critical, error, warning, info or debug.")
@click.option(
    "--access-log/--no-access-log",
    default=None,
    help="Log a line per request (at info).  [default: off]",
)
@click.option("--print-config", is_flag=True, help="Print the resolved settings as JSON and exit.")
def serve(
    *,
    host: str | None,
    port: int | None,
    upstream: str | None,
    data_dir: Path | None,
    config_file: Path | None,
    admin_token: str | None,
    redis_url: str | None,
    chain: str | None,
    semantic: bool | None,
    semantic_shadow: bool | None,
    log_level: str | None,
    access_log: bool | None,
    print_config: bool,
) -> None:
    """Run the caching proxy (OpenAI-compatible; point OPENAI_BASE_URL at it).

    Starts with the embedded store only: no Redis, no database server, no API key (callers send
    their own).
    """
    from stratacache.config import Settings
    from stratacache.errors import StrataError

    overrides: dict[str, Any] = {
        "host": host,
        "port": port,
        "upstream": upstream,
        "data_dir": data_dir,
        "admin_token": admin_token,
        "redis_url": redis_url,
        "chain": chain,
        "semantic": semantic,
        "semantic_shadow": semantic_shadow,
        "log_level": log_level,
        "access_log": access_log,
    }
    try:
        settings = Settings.load(config_file=config_file, env=os.environ, overrides=overrides)
    except StrataError as exc:
        raise click.ClickException(str(exc)) from None
    if print_config:
        click.echo(_settings_json(settings))
        return
    _serve(settings)


def _settings_json(settings: Any) -> str:
    import dataclasses
    import json

    from stratacache.config import redact_url

    values = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
    values["admin_token"] = "<set>" if settings.admin_token else None
    values["redis_url"] = settings.redis_url and redact_url(settings.redis_url)
    values["semantic_index"] = redact_url(settings.semantic_index)
    values["routes"] = {
        str(route.value): {f.name: getattr(policy, f.name) for f in dataclasses.fields(policy)}
        for route, policy in settings.routes.items()
    }
    values["pricing"] = {model: dataclasses.asdict(p) for model, p in settings.pricing.items()}
    return json.dumps(values, indent=2, default=str)


def _serve(settings: Any) -> None:  # pragma: no cover - exercised in a subprocess by the tests
    import importlib.util

    import uvicorn

    from stratacache.errors import StrataError
    from stratacache.proxy.app import create_app
    from stratacache.proxy.server import http_protocol

    try:
        app = create_app(settings)
    except StrataError as exc:
        raise click.ClickException(str(exc)) from None
    layer = app.state.proxy.cache.semantic
    semantic = "off" if layer is None else "shadow" if layer.shadow else "on"
    click.echo(
        f"strata: caching {settings.upstream} on http://{settings.host}:{settings.port}/v1 "
        f"(data in {settings.data_dir}; semantic caching {semantic})",
        err=True,
    )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        # One socket write per response (headers and body together); falls back to h11.
        http=http_protocol(),
        ws="none",
        lifespan="on",
        log_level=settings.log_level,
        # Below info uvicorn would still format every access line and then drop it.
        access_log=settings.access_log and settings.log_level in ("trace", "debug", "info"),
        server_header=False,
    )


@cli.command()
@click.option("--requests", "count", type=click.IntRange(1), default=60, show_default=True)
@click.option("--concurrency", type=click.IntRange(1), default=4, show_default=True)
@click.option(
    "--latency-scale",
    type=click.FloatRange(0),
    default=1.0,
    show_default=True,
    help="Multiply the simulated upstream's latency (0: instant).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep the demo's store here.  [default: a temporary directory]",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Workload seed.")
def demo(
    *, count: int, concurrency: int, latency_scale: float, data_dir: Path | None, seed: int
) -> None:
    """See the cache work against a SIMULATED upstream: no API key, no network."""
    import asyncio

    from rich.console import Console

    from stratacache.proxy.demo import run_demo

    asyncio.run(
        run_demo(
            requests=count,
            concurrency=concurrency,
            latency_scale=latency_scale,
            data_dir=data_dir,
            seed=seed,
            console=Console(),
        )
    )


# The other faces' commands live beside their code; importing them loads no heavy dependency.
cli.add_command(kv_demo_command)
cli.add_command(lint_command, name="lint")
cli.add_command(resp_command, name="resp")
cli.add_command(eval_pairs_command, name="eval-pairs")
cli.add_command(calibrate_command, name="calibrate")
cli.add_command(warm_command, name="warm")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    try:
        cli.main(
            args=list(argv) if argv is not None else None, prog_name="strata", standalone_mode=False
        )
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("Aborted!", err=True)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
