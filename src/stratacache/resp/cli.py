"""``strata resp``: serve the engine over the Redis protocol on localhost.

Registered in :mod:`stratacache.cli` as ``cli.add_command(resp_command, name="resp")``.
"""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["resp_command"]


@click.command("resp")
@click.option("--port", type=click.IntRange(0, 65535), default=6380, show_default=True)
@click.option("--bind", "host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--requirepass", default=None, help="Password clients must AUTH with.")
@click.option(
    "--maxmemory",
    default=None,
    help="Byte budget per database (e.g. 512mb); the engine evicts by W-TinyLFU.",
)
@click.option(
    "--backing",
    default=None,
    metavar="redis://HOST:PORT/DB",
    help="A real Redis behind the sidecar (L2): misses read through, writes go through.",
)
@click.option(
    "--snapshot",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="SAVE/BGSAVE write here; loaded at start when it exists.",
)
@click.option("--databases", type=click.IntRange(1, 1024), default=16, show_default=True)
def resp_command(
    *,
    port: int,
    host: str,
    requirepass: str | None,
    maxmemory: str | None,
    backing: str | None,
    snapshot: Path | None,
    databases: int,
) -> None:
    """Run the Redis-protocol sidecar (RESP2/RESP3) over the in-process engine."""
    from stratacache.errors import StrataError
    from stratacache.resp.config import parse_memory
    from stratacache.resp.keyspace import Keyspace
    from stratacache.resp.server import RespServer, serve
    from stratacache.resp.sidecar import Sidecar
    from stratacache.resp.snapshot import load_snapshot

    budget: int | None = None
    if maxmemory is not None:
        parsed = parse_memory(maxmemory)
        if parsed is None or parsed < 0:
            raise click.BadParameter(
                f"not a memory amount: {maxmemory!r}", param_hint="--maxmemory"
            )
        budget = parsed or None
    keyspace = Keyspace(databases=databases, maxmemory=budget)
    sidecar = Sidecar(
        keyspace,
        requirepass=requirepass or None,
        snapshot_path=str(snapshot) if snapshot is not None else None,
    )
    sidecar.config.set_many([(b"port", str(port).encode()), (b"bind", host.encode())])
    if snapshot is not None and snapshot.exists():
        try:
            loaded = load_snapshot(keyspace, snapshot)
        except (StrataError, OSError) as exc:
            raise click.ClickException(f"cannot load snapshot {snapshot}: {exc}") from None
        click.echo(f"strata resp: loaded {loaded} keys from {snapshot}", err=True)
    if backing is not None:
        from stratacache.resp.backing import attach_backing

        try:
            attach_backing(sidecar, backing)
        except StrataError as exc:
            raise click.ClickException(str(exc)) from None

    def ready(server: RespServer) -> None:
        click.echo(f"strata resp: serving RESP on {server.host}:{server.port}", err=True)

    serve(sidecar, host, port, on_ready=ready)
