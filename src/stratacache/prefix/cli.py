"""``strata lint``: a thin shell over :mod:`stratacache.prefix.lint`.

Registered on the ``strata`` group by ``stratacache.cli``; importing this module imports click only
(tiktoken loads when the command runs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from stratacache.errors import StrataError

__all__ = ["lint_command"]


def _load_template(path: Path) -> str | dict[str, Any]:
    """A template file: a JSON request body (or the first line of a JSONL log), else plain text."""
    text = path.read_text(encoding="utf-8")
    for candidate in (text, text.split("\n", 1)[0]):
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            body = value.get("body")
            return body if isinstance(body, dict) else value
    return text


def _show_diff(old: Path, new: Path, provider: str, as_json: bool) -> None:
    from stratacache.prefix.lint import diff_prompts

    diff = diff_prompts(_load_template(old), _load_template(new), provider=provider)
    if as_json:
        click.echo(json.dumps(diff.as_dict(), indent=2, ensure_ascii=False))
        return
    click.echo(f"{old}: {diff.old_tokens} tokens; {new}: {diff.new_tokens} tokens")
    if diff.old_position is None or diff.new_position is None:
        click.echo("identical token sequences: the cached prefix is unaffected")
        return
    o, n = diff.old_position, diff.new_position
    click.echo(f"tokens diverge at token {diff.common_prefix_tokens}:")
    click.echo(f"  old: {o.path} line {o.line}, column {o.column} (char {o.char})")
    click.echo(f"  new: {n.path} line {n.line}, column {n.column} (char {n.char})")
    for edit in diff.edits:
        click.echo(
            f"  {edit['op']:<7} old[{edit['old'][0]}:{edit['old'][1]}] {edit['old_text']!r}"
            f" -> new[{edit['new'][0]}:{edit['new'][1]}] {edit['new_text']!r}"
        )
    click.echo(
        f"{provider}: a request of the new version can read {diff.reusable_tokens} of the "
        f"{diff.cacheable_tokens} tokens the old version could read from the prompt cache"
    )


def _show_report(report: Any) -> None:
    click.echo(f"{report.requests} requests, {len(report.groups)} groups")
    for g in report.groups:
        saved = g.expected_dollars_saved_per_1k
        if saved is None:
            dollars = "unpriced"
        elif saved < 0:  # cache writes that are never read back cost more than no caching
            dollars = f"${-saved:.4f} LOST (writes cost more than reads save), not"
        else:
            dollars = f"${saved:.4f}"
        click.echo(
            f"\n[{g.id}] {g.label}  ({g.requests} requests, {g.provider})\n"
            f"  stable prefix {g.stable_prefix_tokens} tokens of median {g.median_prompt_tokens} "
            f"(minimum {g.minimum_tokens})\n"
            f"  expected hit rate {g.provider_hit_rate:.1%}, cached tokens "
            f"{g.cached_token_share:.1%}, per 1k requests: "
            f"{g.expected_cached_tokens_per_1k:.0f} cached tokens, {dollars} saved"
        )
        for f in report.findings:
            if f.group != g.id:
                continue
            p = f.position
            click.echo(
                f"  - {f.kind} at token {p.token} ({p.path} line {p.line}, col {p.column}); "
                f"{f.requests} requests\n    {f.message}\n    fix: {f.fix}"
            )
    for s in report.skipped[:10]:
        click.echo(f"skipped line {s.line}: {s.reason}", err=True)
    if len(report.skipped) > 10:
        click.echo(f"... and {len(report.skipped) - 10} more skipped lines", err=True)


@click.command("lint")
@click.argument("log", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--provider",
    type=click.Choice(["openai", "anthropic", "gemini"]),
    default=None,
    help="Whose prompt-cache rules to apply.  [default: guessed per request]",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--fail-under",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help="Exit 1 when a group's expected hit rate is under RATE (0..1).",
)
@click.option(
    "--diff",
    nargs=2,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    metavar="OLD NEW",
    help="Show where two template versions' tokens diverge.",
)
def lint_command(
    *,
    log: Path | None,
    provider: str | None,
    as_json: bool,
    fail_under: float | None,
    diff: tuple[Path, Path] | None,
) -> None:
    """Why the provider's prompt cache misses: analyse a JSONL log of request bodies.

    Groups requests by template and reports, per group, the stable prefix in tokens, the expected
    provider cache hit rate and savings, and findings (dynamic content early in the prompt,
    whitespace, key-order and tool-order variance, prefixes under the minimum, misplaced Anthropic
    breakpoints) with their exact position and a fix.
    """
    try:
        if diff is not None:
            if log is not None:
                raise click.UsageError("give either LOG or --diff OLD NEW, not both")
            _show_diff(diff[0], diff[1], provider or "openai", as_json)
            return
        if log is None:
            raise click.UsageError(
                "missing LOG (a JSONL file of request bodies), or --diff OLD NEW"
            )
        from stratacache.prefix.lint import lint

        try:
            with log.open("rb") as handle:
                report = lint(handle, provider=provider)
        except OSError as exc:
            raise click.FileError(str(log), hint=exc.strerror or str(exc)) from None
    except StrataError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
    else:
        _show_report(report)
    if fail_under is not None:
        failing = report.failing(fail_under)
        if failing:
            names = ", ".join(f"{g.id} ({g.provider_hit_rate:.1%})" for g in failing)
            # A ClickException exits 1 through strata's main(); click's Exit would be swallowed.
            raise click.ClickException(f"expected hit rate under {fail_under:.1%}: {names}")
