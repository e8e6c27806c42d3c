"""``strata kv-demo``: the KV tier's time-to-first-token demonstration, as a click command.

A thin shell over :func:`stratacache.kv.demo.run_demo`. Registered on the ``strata`` group by
``stratacache.cli``; importing this module imports click only (torch loads when the command runs).
"""

from __future__ import annotations

import json

import click

from stratacache.errors import StrataError

__all__ = ["kv_demo_command"]


@click.command("kv-demo")
@click.option("--prefix-tokens", type=click.IntRange(1), default=2048, show_default=True)
@click.option("--suffix-tokens", type=click.IntRange(1), default=32, show_default=True)
@click.option("--block-size", type=click.IntRange(1), default=256, show_default=True)
@click.option("--layers", type=click.IntRange(1), default=4, show_default=True)
@click.option("--hidden", type=click.IntRange(8), default=256, show_default=True)
@click.option("--heads", type=click.IntRange(1), default=8, show_default=True)
@click.option("--kv-heads", type=click.IntRange(1), default=4, show_default=True)
@click.option("--vocab", type=click.IntRange(2), default=8192, show_default=True)
@click.option(
    "--tier",
    type=click.Choice(["memory", "disk", "memory+disk"]),
    default="memory",
    show_default=True,
    help="Where the blocks live (disk: a temporary directory, removed afterwards).",
)
@click.option("--repeats", type=click.IntRange(1), default=3, show_default=True)
@click.option("--threads", type=click.IntRange(1), default=None, help="torch threads.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def kv_demo_command(
    *,
    prefix_tokens: int,
    suffix_tokens: int,
    block_size: int,
    layers: int,
    hidden: int,
    heads: int,
    kv_heads: int,
    vocab: int,
    tier: str,
    repeats: int,
    threads: int | None,
    seed: int,
    as_json: bool,
) -> None:
    """Time a prompt with a long shared prefix without and with the KV tier.

    Builds a small random-weight Llama-style model locally (nothing is downloaded), stores the
    prefix's KV blocks with one request, then times a second request sharing the prefix both
    ways: time to first token, the ratio, and the largest logit difference between the two runs.
    """
    from stratacache.kv.demo import DemoSettings, run_demo

    try:
        settings = DemoSettings(
            prefix_tokens=prefix_tokens,
            suffix_tokens=suffix_tokens,
            block_size=block_size,
            layers=layers,
            hidden=hidden,
            heads=heads,
            kv_heads=kv_heads,
            vocab=vocab,
            tier=tier,  # type: ignore[arg-type]  # click.Choice checked it
            repeats=repeats,
            threads=threads,
            seed=seed,
        )
        result = run_demo(settings)
    except (StrataError, ImportError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(result.as_dict(), sort_keys=True))
        return
    click.echo(f"model:   {result.model}")
    click.echo(
        f"prompt:  {result.prompt_tokens} tokens, {result.reused_tokens} reused from the "
        f"{result.tier} tier in blocks of {result.block_size}, {result.computed_tokens} computed"
    )
    click.echo(f"TTFT without the tier: {result.ttft_without_s * 1000:9.1f} ms")
    click.echo(
        f"TTFT with the tier:    {result.ttft_with_s * 1000:9.1f} ms"
        f"   (of which loading: {result.load_s * 1000:.1f} ms)"
    )
    click.echo(f"ratio:                 {result.ttft_ratio:9.1f}x faster")
    click.echo(f"max |logit diff|:      {result.max_logit_diff:9.2e}")
    click.echo(f"(median of {result.repeats} runs, {result.threads} torch threads)")
