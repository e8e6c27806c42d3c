"""The command table: every command the sidecar serves, as data.

Each handler module of :mod:`stratacache.resp.handlers` exports a tuple ``COMMANDS`` of
:class:`~stratacache.resp.spec.CommandSpec` (name, arity, flags, key positions, group, handler);
:func:`build_table` gathers them into a :class:`CommandTable`. The dispatcher
(:class:`~stratacache.resp.sidecar.Sidecar`) looks a command up here and checks arity,
authentication, MULTI and pub/sub restrictions from the flags before it calls the handler;
handlers never re-check them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from stratacache.errors import ConfigError
from stratacache.resp.handlers import (
    connection,
    hashes,
    keys,
    lists,
    pubsub,
    scripting,
    server,
    sets,
    strings,
    transactions,
    zsets,
)
from stratacache.resp.spec import CommandSpec, Flag, Handler, command

__all__ = ["CommandSpec", "CommandTable", "Flag", "Handler", "build_table", "command"]


class CommandTable(Mapping[bytes, CommandSpec]):
    """Commands by name; lookups accept any letter case.

    Both the lower- and upper-case spellings are keys, so the names clients actually send hit the
    dict directly; other spellings are lowered once.
    """

    def __init__(self, specs: Iterable[CommandSpec]) -> None:
        self._specs: dict[bytes, CommandSpec] = {}
        self._fast: dict[bytes, CommandSpec] = {}
        self.fast = self._fast
        """Specs by their lower- and upper-case names: the dispatcher's first, cheapest try."""
        for spec in specs:
            name = spec.name.encode()
            if name in self._specs:
                raise ConfigError(f"command {spec.name!r} is defined twice")
            self._specs[name] = spec
            self._fast[name] = spec
            self._fast[name.upper()] = spec

    def lookup(self, name: bytes) -> CommandSpec | None:
        """The spec for ``name`` in any case, or ``None``."""
        spec = self._fast.get(name)
        if spec is None:
            spec = self._specs.get(name.lower())
        return spec

    def __getitem__(self, name: bytes) -> CommandSpec:
        spec = self.lookup(name)
        if spec is None:
            raise KeyError(name)
        return spec

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)


def build_table() -> CommandTable:
    """Gather every handler module's ``COMMANDS`` into one table."""
    modules = (
        connection,
        keys,
        strings,
        hashes,
        lists,
        sets,
        zsets,
        transactions,
        pubsub,
        server,
        scripting,
    )
    return CommandTable(spec for module in modules for spec in module.COMMANDS)
