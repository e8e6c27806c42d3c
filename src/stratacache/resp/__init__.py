"""The Redis-protocol sidecar: the engine served over RESP2/RESP3 (``strata resp``).

Layers, each usable on its own:

* :mod:`~stratacache.resp.protocol`: sans-IO request readers (hiredis-backed or pure Python),
  the reply encoder and a reply reader.
* :mod:`~stratacache.resp.keyspace` and :mod:`~stratacache.resp.values`: databases on the
  engine's :class:`~stratacache.engine.Store`, and Redis's data types weighed for ``maxmemory``.
* :mod:`~stratacache.resp.commands`, :mod:`~stratacache.resp.spec` and
  :mod:`~stratacache.resp.handlers`: the command table.
* :mod:`~stratacache.resp.sidecar`: dispatch, transactions, blocking, pub/sub; still sans-IO.
* :mod:`~stratacache.resp.scripting`: Lua through lupa; :mod:`~stratacache.resp.snapshot`:
  SAVE/DUMP; :mod:`~stratacache.resp.backing`: a real Redis behind the sidecar (L2).
* :mod:`~stratacache.resp.server`: the asyncio shell (sockets, pipelining, backpressure).

The names below are imported on first use, so importing this package (the CLI does) costs
nothing until the sidecar is actually built.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stratacache.resp.backing import Backing, attach_backing
    from stratacache.resp.keyspace import Keyspace
    from stratacache.resp.protocol import (
        CommandError,
        ErrorReply,
        ProtocolError,
        PythonRequestReader,
        ReplyReader,
        encode,
        request_reader,
    )
    from stratacache.resp.server import RespServer, serve
    from stratacache.resp.sidecar import Sidecar

__all__ = [
    "Backing",
    "CommandError",
    "ErrorReply",
    "Keyspace",
    "ProtocolError",
    "PythonRequestReader",
    "ReplyReader",
    "RespServer",
    "Sidecar",
    "attach_backing",
    "encode",
    "request_reader",
    "serve",
]

_HOMES = {
    "Backing": "backing",
    "attach_backing": "backing",
    "Keyspace": "keyspace",
    "CommandError": "protocol",
    "ErrorReply": "protocol",
    "ProtocolError": "protocol",
    "PythonRequestReader": "protocol",
    "ReplyReader": "protocol",
    "encode": "protocol",
    "request_reader": "protocol",
    "RespServer": "server",
    "serve": "server",
    "Sidecar": "sidecar",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'stratacache.resp' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"stratacache.resp.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
