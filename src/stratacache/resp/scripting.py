"""Lua scripting (EVAL, EVALSHA, SCRIPT, FUNCTION, FCALL) on real Lua 5.1 through ``lupa``.

Rate limiters, locks and queues ship their logic as Lua scripts, so the sidecar runs them with
the semantics Redis 7.0 gives them:

* the sandbox of ``lua_prelude.lua``: read-only globals, ``redis.call``/``redis.pcall`` and the
  rest of the ``redis`` API, ``cjson``, ``cmsgpack`` and ``bit`` (implemented here in Python),
  ``math.random`` on a seedable generator;
* Redis's type conversions both ways, including RESP3 types after ``redis.setresp(3)``, and its
  error texts (``... script: f_<sha>, on @user_script:1.``);
* scripts run atomically: nothing else runs while a script runs.

* a script that runs past ``lua-time-limit`` milliseconds (``busy-reply-threshold``, 5 s by
  default) makes the server *busy*: the script's instruction-count hook, every 100,000 Lua
  instructions, hands the server's :attr:`~stratacache.resp.sidecar.Sidecar.busy_poller` the
  chance to read the other clients and answer them ``BUSY`` (the event loop cannot: the script
  holds its thread), while SCRIPT KILL / FUNCTION KILL, SHUTDOWN and the handshake commands
  are served; SCRIPT KILL stops a script that has not written (``UNKILLABLE`` otherwise) at its
  next line of user code, even through ``pcall``.

A safety net Redis does not have: a script that runs past ``strata-script-time-limit``
milliseconds (30 s by default; CONFIG SET, 0 = never) is stopped with an error instead of
running forever.

EVAL scripts and function libraries live in two separate Lua runtimes, as in Redis: SCRIPT FLUSH
and FUNCTION FLUSH each start theirs afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import re
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

from stratacache.errors import MissingExtraError
from stratacache.resp.protocol import (
    NULL_ARRAY,
    OK,
    CommandError,
    ErrorReply,
    Push,
    RawReply,
    SimpleString,
    Verbatim,
    format_double,
)
from stratacache.resp.session import Session

if TYPE_CHECKING:
    from stratacache.resp.sidecar import Sidecar

__all__ = [
    "BUSY_EVAL",
    "BUSY_FUNCTION",
    "FunctionInfo",
    "Library",
    "LuaEnvironment",
    "Script",
    "ScriptEngine",
]

logger = logging.getLogger("stratacache.resp.scripts")

_FLAGS: Final = ("no-writes", "allow-oom", "allow-stale", "no-cluster", "allow-cross-slot-keys")
_NAME_RE: Final = re.compile(rb"[A-Za-z0-9_]+")
_VERSION_NUM: Final = 0x00070F  # 7.0.15


@dataclass(slots=True)
class Script:
    """A compiled EVAL script."""

    sha: str
    body: bytes
    function: Any
    flags: frozenset[str]
    compat: bool
    """No ``#!lua`` line: Redis's pre-7 behaviour (may write, no flags)."""


@dataclass(slots=True)
class FunctionInfo:
    """A function registered by a library."""

    name: bytes
    library: bytes
    callback: Any
    flags: frozenset[str]
    description: bytes | None


@dataclass(slots=True)
class Library:
    """A function library (FUNCTION LOAD)."""

    name: bytes
    code: bytes
    functions: dict[bytes, FunctionInfo] = field(default_factory=dict)


@dataclass(slots=True)
class _Run:
    """The script being run: who called it and under which rules."""

    caller: Session
    client: Session
    readonly: bool
    deadline: float
    busy_at: float = math.inf
    """When (``time.monotonic``) the server turns busy: start + ``lua-time-limit``."""
    is_eval: bool = True
    wrote: bool = False
    """A write command ran: SCRIPT KILL must refuse (``UNKILLABLE``)."""
    killed: bool = False
    """SCRIPT KILL / FUNCTION KILL asked for the script to stop."""


BUSY_EVAL: Final = ErrorReply(
    "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE."
)
"""The reply other clients get while an EVAL script runs long."""
BUSY_FUNCTION: Final = ErrorReply(
    "BUSY Redis is busy running a script. You can only call FUNCTION KILL or SHUTDOWN NOSAVE."
)
"""The reply other clients get while a function runs long."""
_KILLED_BY_USER: Final = b"ERR Script killed by user with SCRIPT KILL..."
_UNKILLABLE: Final = (
    "UNKILLABLE Sorry the script already executed write commands against the dataset. You can "
    "either wait the script termination or kill the server in a hard way using the SHUTDOWN "
    "NOSAVE command."
)
_NOTBUSY: Final = "NOTBUSY No scripts in execution right now."


def _lupa() -> Any:
    try:
        from lupa import lua51  # type: ignore[import-untyped]
    except ImportError:
        raise MissingExtraError("lupa", "resp") from None
    return lua51


def _int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - 0x1_0000_0000 if value & 0x8000_0000 else value


class LuaEnvironment:
    """One Lua 5.1 runtime with the Redis sandbox, bridged to a :class:`ScriptEngine`."""

    def __init__(self, engine: ScriptEngine, *, for_functions: bool) -> None:
        lua51 = _lupa()
        self._lua51 = lua51
        self.engine = engine
        self.runtime = lua51.LuaRuntime(
            encoding=None,
            unpack_returned_tuples=True,
            register_eval=False,
            register_builtins=False,
        )
        self.for_functions = for_functions
        self.null = self.runtime.table()
        self._rawequal = self.runtime.eval(b"rawequal")
        self.encode_max_depth = 1000
        self.decode_max_depth = 1000
        self.encode_invalid_numbers = False
        self.random = random.Random(0)
        self.registered: dict[bytes, FunctionInfo] | None = None
        bridge = self.runtime.table_from(
            {
                b"call": self._call,
                b"call_packed": self._call_packed,
                b"error_text": _error_text,
                b"sha1hex": lambda text: hashlib.sha1(_as_bytes(text)).hexdigest().encode(),
                b"log": self._log,
                b"setresp": self._setresp,
                b"script_resp": self._script_resp,
                b"is_command": self._is_command,
                b"version": b"7.0.15",
                b"version_num": _VERSION_NUM,
                b"cjson_encode": self._cjson_encode,
                b"cjson_decode": self._cjson_decode,
                b"cjson_encode_max_depth": self._set_encode_depth,
                b"cjson_decode_max_depth": self._set_decode_depth,
                b"cjson_encode_invalid_numbers": self._set_invalid_numbers,
                b"cjson_null": self.null,
                b"msgpack_pack": self._msgpack_pack,
                b"msgpack_unpack": self._msgpack_unpack,
                b"random": self.random.random,
                b"randomseed": lambda seed: self.random.seed(int(seed)),
                b"expired": self._expired,
                b"register_function": self._register_function,
                **{name.encode(): function for name, function in _BIT_FUNCTIONS.items()},
            }
        )
        prelude = resources.files("stratacache.resp").joinpath("lua_prelude.lua").read_bytes()
        wrappers = (
            b"local py = ...\n"
            b"local function raising(f) return function(...) local v, e = f(...) "
            b"if e then error(e, 0) end return v end end\n"
            b"for _, name in ipairs({'cjson_encode', 'cjson_decode', 'msgpack_pack'}) do "
            b"py[name] = raising(py[name]) end\n"
            b"local unpacker = py.msgpack_unpack\n"
            b"py.msgpack_unpack = function(...) local v, e = unpacker(...) "
            b"if e then error(e, 0) end return v end\n"
            b"local register = py.register_function\n"
            b"py.register_function = function(...) local e = register(...) "
            b"if e then error({err = e}) end end\n"
            b"return py\n"
        )
        bridge = self.runtime.execute(wrappers, bridge)
        self.api = self.runtime.execute(prelude, bridge)
        self._compile = self.api[b"compile"]
        self._run = self.api[b"run"]
        self._load_library = self.api[b"load_library"]
        self._reset = self.api[b"reset"]

    # -- running

    def compile(self, body: bytes, chunkname: bytes) -> Any:
        """Compile ``body``; :class:`CommandError` with Lua's message when it does not compile."""
        function, message = self._compile(body, chunkname)
        if function is None:
            raise CommandError(
                "ERR Error compiling script (new function): "
                + _as_bytes(message).decode("utf-8", "replace")
            )
        return function

    def run(
        self,
        function: Any,
        keys: list[bytes],
        args: list[bytes],
        caller_resp: int,
        funcname: bytes,
        *,
        as_function: bool,
    ) -> object:
        """Run a compiled script or registered function; its reply, or an error reply."""
        table_from = self.runtime.table_from
        try:
            ok, payload, counted = self._run(
                function,
                table_from(keys),
                table_from(args),
                caller_resp,
                funcname,
                as_function,
                True,
            )
        except self._lua51.LuaError as exc:
            # Only the sandbox's own code can fail outside the script's protected call.
            self._reset()
            return ErrorReply(
                f"ERR Error running script {funcname.decode('utf-8', 'replace')}, {exc}"
            )
        if ok:
            if payload[:1] == b"-":
                # A script returning an error table answers with an error like any command.
                return ErrorReply(payload[1:-2].decode("utf-8", "replace"))
            return RawReply(payload)
        return ErrorReply(_as_bytes(payload).decode("utf-8", "replace"), counted=bool(counted))

    def load_library(self, code: bytes) -> dict[bytes, FunctionInfo]:
        """Run a library's top level and return the functions it registered."""
        self.registered = {}
        try:
            try:
                ok, message = self._load_library(code)
            except self._lua51.LuaError as exc:
                self._reset()
                raise CommandError(f"ERR Error registering functions: {exc}") from None
            if not ok:
                raise CommandError("ERR " + _as_bytes(message).decode("utf-8", "replace"))
            return self.registered
        finally:
            self.registered = None

    # -- the bridge

    def _call_packed(self, table: Any, count: int) -> tuple[Any, bool]:
        return self._call(*(table[index] for index in range(1, int(count) + 1)))

    def _call(self, *args: Any) -> tuple[Any, bool]:
        run = self.engine.current
        if run is None:
            return self._error(
                "ERR redis.call/pcall can only be called inside a script invocation"
            ), True
        if not args:
            return self._error(
                "ERR Please specify at least one argument for this redis lib call"
            ), True
        argv: list[bytes] = []
        for arg in args:
            if isinstance(arg, bytes):
                argv.append(arg)
            elif isinstance(arg, int | float) and not isinstance(arg, bool):
                argv.append(b"%.17g" % float(arg))
            else:
                return self._error(
                    "ERR Lua redis lib command arguments must be strings or integers"
                ), True
        sidecar = self.engine.sidecar
        spec = sidecar.table.lookup(argv[0])
        if spec is not None and spec.subcommands and len(argv) >= 2:
            spec = spec.subcommands.get(argv[1].lower(), spec)
        if spec is None or spec.handler is None:
            return self._rejected("ERR Unknown Redis command called from script"), True
        arity = spec.arity
        if (arity > 0 and arity != len(argv)) or len(argv) < -arity:
            return self._rejected(
                "ERR Wrong number of args calling Redis command from script"
            ), True
        if spec.noscript:
            return self._rejected("ERR This Redis command is not allowed from script"), True
        if spec.write and run.readonly:
            return self._rejected(
                "ERR Write commands are not allowed from read-only scripts."
            ), True
        if spec.write and sidecar.min_replicas:
            return self._rejected(sidecar_noreplicas()), True
        if spec.write:
            run.wrote = True
        reply = sidecar.call(run.client, spec, argv)
        if type(reply) is ErrorReply:
            return self._error(reply.message, counted=True), True
        return self._to_lua(reply, run.client.resp), False

    def _error(self, message: str, *, counted: bool = False) -> Any:
        fields: dict[bytes, Any] = {b"err": message.encode("utf-8", "surrogateescape")}
        if counted:
            fields[b"ignore_error_stats_update"] = True
        return self.runtime.table_from(fields)

    def _rejected(self, message: str) -> Any:
        """A command refused before it ran: counted now, not again when the script fails."""
        self.engine.sidecar.count_error(message)
        return self._error(message, counted=True)

    def lua_memory(self) -> int:
        """Bytes the Lua heap holds."""
        return int(float(self.runtime.eval(b'collectgarbage("count")')) * 1024)

    def _to_lua(self, value: object, resp: int) -> Any:
        kind = type(value)
        if kind is bytes or kind is RawReply:
            return bytes(value)  # type: ignore[call-overload]
        if kind is int:
            return value
        if value is None or value is NULL_ARRAY:
            return None if resp == 3 else False
        if kind is list or kind is tuple or kind is Push:
            items: list[object] = value  # type: ignore[assignment]
            return self.runtime.table_from([self._to_lua(item, resp) for item in items])
        if kind is SimpleString:
            return self.runtime.table_from({b"ok": value.encode()})  # type: ignore[attr-defined]
        if kind is ErrorReply:
            return self._error(value.message)  # type: ignore[attr-defined]
        if kind is bool:
            return value if resp == 3 else (1 if value else 0)
        if kind is float:
            number: float = value  # type: ignore[assignment]
            if resp == 3:
                return self.runtime.table_from({b"double": number})
            return format_double(number)
        if kind is str or kind is Verbatim:
            text = value.encode("utf-8", "surrogateescape")  # type: ignore[attr-defined]
            if kind is Verbatim and resp == 3:
                inner = self.runtime.table_from({b"format": b"txt", b"string": text})
                return self.runtime.table_from({b"verbatim_string": inner})
            return text
        if kind is dict:
            mapping: dict[object, object] = value  # type: ignore[assignment]
            if resp == 3:
                converted = self.runtime.table()
                for key, item in mapping.items():
                    converted[self._to_lua(key, resp)] = self._to_lua(item, resp)
                return self.runtime.table_from({b"map": converted})
            flat: list[object] = []
            for key, item in mapping.items():
                flat.extend((key, item))
            return self._to_lua(flat, resp)
        if kind is set or kind is frozenset:
            members: set[object] = value  # type: ignore[assignment]
            if resp == 3:
                converted = self.runtime.table()
                for member in members:
                    converted[self._to_lua(member, resp)] = True
                return self.runtime.table_from({b"set": converted})
            return self._to_lua(list(members), resp)
        return None

    def _log(self, level: int, message: bytes) -> None:
        logger.log(
            (logging.DEBUG, logging.INFO, logging.INFO, logging.WARNING)[int(level)],
            "script: %s",
            _as_bytes(message).decode("utf-8", "replace"),
        )

    def _setresp(self, version: int) -> None:
        run = self.engine.current
        if run is not None:
            run.client.resp = int(version)

    def _script_resp(self) -> int:
        run = self.engine.current
        return run.client.resp if run is not None else 2

    def _is_command(self, *args: Any) -> bool:
        name = args[0] if args and isinstance(args[0], bytes) else None
        return name is not None and self.engine.sidecar.table.lookup(name) is not None

    def _expired(self) -> bool | bytes:
        """The hook's question, every 100,000 instructions: stop the script? ``True`` past
        ``strata-script-time-limit``, the error text once killed; past ``lua-time-limit`` the
        other clients are served first."""
        run = self.engine.current
        if run is None:
            return False
        now = time.monotonic()
        if now > run.deadline:
            return True
        if now >= run.busy_at:
            self.engine.serve_while_busy(run)
        return _KILLED_BY_USER if run.killed else False

    # -- cjson

    def _set_encode_depth(self, depth: Any) -> int:
        self.encode_max_depth = int(depth)
        return self.encode_max_depth

    def _set_decode_depth(self, depth: Any) -> int:
        self.decode_max_depth = int(depth)
        return self.decode_max_depth

    def _set_invalid_numbers(self, flag: Any) -> bool:
        self.encode_invalid_numbers = bool(flag)
        return self.encode_invalid_numbers

    def _cjson_encode(self, value: Any) -> tuple[Any, Any]:
        try:
            return self._json_of(value, 0).encode("utf-8", "surrogateescape"), None
        except ValueError as exc:
            return None, str(exc).encode()

    def _json_of(self, value: Any, depth: int) -> str:
        if depth > self.encode_max_depth:
            raise ValueError(f"Cannot serialise, excessive nesting ({depth})")
        if value is None or (
            self._lua51.lua_type(value) == "table" and self._rawequal(value, self.null)
        ):
            return "null"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            number = float(value)
            if math.isnan(number) or math.isinf(number):
                if not self.encode_invalid_numbers:
                    raise ValueError("Cannot serialise number: must not be NaN or Inf")
                return "nan" if math.isnan(number) else ("inf" if number > 0 else "-inf")
            return f"{number:.14g}"
        if isinstance(value, bytes):
            return json.dumps(value.decode("utf-8", "surrogateescape"), ensure_ascii=False)
        if self._lua51.lua_type(value) == "table":
            items = list(value.items())
            if not items:
                return "{}"
            if all(isinstance(k, int | float) and not isinstance(k, bool) for k, _ in items):
                indexes = [k for k, _ in items]
                if all(float(k).is_integer() and k >= 1 for k in indexes):
                    size = int(max(indexes))
                    if size > 2 * len(items) and size > 10:
                        raise ValueError("Cannot serialise table: excessively sparse array")
                    by_index = {int(k): v for k, v in items}
                    return (
                        "["
                        + ",".join(
                            self._json_of(by_index.get(i), depth + 1) for i in range(1, size + 1)
                        )
                        + "]"
                    )
            parts = []
            for key, item in items:
                if isinstance(key, bytes):
                    name = key.decode("utf-8", "surrogateescape")
                elif isinstance(key, int | float) and not isinstance(key, bool):
                    name = f"{float(key):.14g}"
                else:
                    kind = "boolean" if isinstance(key, bool) else "key"
                    raise ValueError(
                        f"Cannot serialise {kind}: table key must be a number or string"
                    )
                parts.append(
                    json.dumps(name, ensure_ascii=False) + ":" + self._json_of(item, depth + 1)
                )
            return "{" + ",".join(parts) + "}"
        raise ValueError(
            f"Cannot serialise {self._lua51.lua_type(value) or 'value'}: type not supported"
        )

    def _cjson_decode(self, text: Any) -> tuple[Any, Any]:
        if not isinstance(text, bytes):
            return None, b"bad argument #1 to 'decode' (string expected)"
        try:
            parsed = json.loads(text.decode("utf-8", "surrogateescape"))
        except (ValueError, RecursionError) as exc:
            return None, f"Expected value but found invalid token: {exc}".encode()
        try:
            return self._lua_of_json(parsed, 1), None
        except ValueError as exc:
            return None, str(exc).encode()

    def _lua_of_json(self, value: object, depth: int) -> Any:
        if isinstance(value, dict | list) and depth > self.decode_max_depth:
            raise ValueError(f"Found too many nested data structures ({depth})")
        if value is None:
            return self.null
        if isinstance(value, str):
            return value.encode("utf-8", "surrogateescape")
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float):
            return float(value) if isinstance(value, float) else value
        if isinstance(value, list):
            return self.runtime.table_from([self._lua_of_json(item, depth + 1) for item in value])
        if isinstance(value, dict):
            table = self.runtime.table()
            for key, item in value.items():
                table[key.encode("utf-8", "surrogateescape")] = self._lua_of_json(item, depth + 1)
            return table
        return None

    # -- cmsgpack

    def _msgpack_pack(self, *values: Any) -> tuple[Any, Any]:
        out = bytearray()
        try:
            for value in values:
                self._pack_one(out, value, 0)
        except ValueError as exc:
            return None, str(exc).encode()
        return bytes(out), None

    def _pack_one(self, out: bytearray, value: Any, depth: int) -> None:
        import struct

        if value is None or (depth >= 16 and self._lua51.lua_type(value) == "table"):
            # lua_cmsgpack encodes a table nested 16 deep as nil: cycles end there.
            out.append(0xC0)
        elif isinstance(value, bool):
            out.append(0xC3 if value else 0xC2)
        elif isinstance(value, int | float):
            number = float(value)
            if number.is_integer() and -(2**63) <= number < 2**64:
                self._pack_int(out, int(number))
            else:
                out.append(0xCB)
                out += struct.pack(">d", number)
        elif isinstance(value, bytes):
            size = len(value)
            if size < 32:
                out.append(0xA0 | size)
            elif size <= 0xFF:
                out += bytes((0xD9, size))
            elif size <= 0xFFFF:
                out.append(0xDA)
                out += struct.pack(">H", size)
            else:
                out.append(0xDB)
                out += struct.pack(">I", size)
            out += value
        elif self._lua51.lua_type(value) == "table":
            items = list(value.items())
            count = len(items)
            is_array = all(
                isinstance(k, int | float) and not isinstance(k, bool) for k, _ in items
            ) and sorted(float(k) for k, _ in items) == [float(i) for i in range(1, count + 1)]
            if is_array and count:
                if count <= 15:
                    out.append(0x90 | count)
                elif count <= 0xFFFF:
                    out.append(0xDC)
                    out += struct.pack(">H", count)
                else:
                    out.append(0xDD)
                    out += struct.pack(">I", count)
                by_index = {int(k): v for k, v in items}
                for index in range(1, count + 1):
                    self._pack_one(out, by_index[index], depth + 1)
            else:
                if count <= 15:
                    out.append(0x80 | count)
                elif count <= 0xFFFF:
                    out.append(0xDE)
                    out += struct.pack(">H", count)
                else:
                    out.append(0xDF)
                    out += struct.pack(">I", count)
                for key, item in items:
                    self._pack_one(out, key, depth + 1)
                    self._pack_one(out, item, depth + 1)
        else:
            out.append(0xC0)

    @staticmethod
    def _pack_int(out: bytearray, number: int) -> None:
        import struct

        if number >= 0:
            if number <= 0x7F:
                out.append(number)
            elif number <= 0xFF:
                out += bytes((0xCC, number))
            elif number <= 0xFFFF:
                out.append(0xCD)
                out += struct.pack(">H", number)
            elif number <= 0xFFFFFFFF:
                out.append(0xCE)
                out += struct.pack(">I", number)
            else:
                out.append(0xCF)
                out += struct.pack(">Q", number)
        elif number >= -32:
            out += struct.pack(">b", number)
        elif number >= -128:
            out.append(0xD0)
            out += struct.pack(">b", number)
        elif number >= -32768:
            out.append(0xD1)
            out += struct.pack(">h", number)
        elif number >= -(2**31):
            out.append(0xD2)
            out += struct.pack(">i", number)
        else:
            out.append(0xD3)
            out += struct.pack(">q", number)

    def _msgpack_unpack(
        self, data: Any, limit: Any, offset: Any, with_offset: Any = False
    ) -> tuple[Any, Any]:
        try:
            import msgpack  # type: ignore[import-untyped]
        except ImportError:  # pragma: no cover
            return None, b"cmsgpack needs the msgpack package"
        if not isinstance(data, bytes):
            return None, b"bad argument #1 to 'unpack' (string expected)"
        start = int(offset or 0)
        if start < 0 or start > len(data):
            return None, b"Start offset greater than input length"
        unpacker = msgpack.Unpacker(raw=True, strict_map_key=False, max_buffer_size=len(data) + 1)
        unpacker.feed(data[start:])
        results: list[Any] = []
        wanted = int(limit or 0)
        try:
            while wanted == 0 or len(results) < wanted:
                try:
                    results.append(self._lua_of_msgpack(unpacker.unpack()))
                except msgpack.OutOfData:
                    break
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            return None, f"Missing bytes in input: {exc}".encode()
        if with_offset:
            consumed = start + unpacker.tell()
            results.insert(0, -1 if consumed >= len(data) else consumed)
        return self.runtime.table_from(results), None

    def _lua_of_msgpack(self, value: object) -> Any:
        if value is None:
            return None
        if isinstance(value, list | tuple):
            return self.runtime.table_from([self._lua_of_msgpack(item) for item in value])
        if isinstance(value, dict):
            table = self.runtime.table()
            for key, item in value.items():
                table[self._lua_of_msgpack(key)] = self._lua_of_msgpack(item)
            return table
        if isinstance(value, str):
            return value.encode("utf-8", "surrogateescape")
        return value

    # -- FUNCTION LOAD

    def _register_function(self, *args: Any) -> bytes | None:
        if self.registered is None:
            return b"ERR redis.register_function can only be called on FUNCTION LOAD command"
        if len(args) not in (1, 2):
            return b"ERR wrong number of arguments to redis.register_function"
        flags: set[str] = set()
        description: bytes | None = None
        if len(args) == 1:
            table = args[0]
            if self._lua51.lua_type(table) != "table":
                return (
                    b"ERR calling redis.register_function with a single argument is only "
                    b"applicable to Lua table (representing named arguments)."
                )
            name: Any = None
            callback: Any = None
            for key, value in table.items():
                if not isinstance(key, bytes):
                    return (
                        b"ERR named argument key given to redis.register_function is not a string"
                    )
                lowered = key.lower()
                if lowered == b"function_name":
                    if not isinstance(value, bytes):
                        return b"ERR function_name argument given to redis.register_function must be a string"
                    name = value
                elif lowered == b"description":
                    if not isinstance(value, bytes):
                        return b"ERR description argument given to redis.register_function must be a string"
                    description = value
                elif lowered == b"callback":
                    if self._lua51.lua_type(value) != "function":
                        return b"ERR callback argument given to redis.register_function must be a function"
                    callback = value
                elif lowered == b"flags":
                    if self._lua51.lua_type(value) != "table":
                        return (
                            b"ERR flags argument to redis.register_function must be a table "
                            b"representing function flags"
                        )
                    for _, flag in value.items():
                        text = flag.decode() if isinstance(flag, bytes) else ""
                        if text not in _FLAGS:
                            return b"ERR unknown flag given"
                        flags.add(text)
                else:
                    return b"ERR unknown argument given to redis.register_function"
            if name is None:
                return b"ERR redis.register_function must get a function name argument"
            if callback is None:
                return b"ERR redis.register_function must get a callback argument"
        else:
            name, callback = args
            if not isinstance(name, bytes):
                return b"ERR first argument to redis.register_function must be a string"
            if self._lua51.lua_type(callback) != "function":
                return b"ERR second argument to redis.register_function must be a function"
        if not _NAME_RE.fullmatch(name):
            return (
                b"ERR Library names can only contain letters, numbers, or underscores(_) and "
                b"must be at least one character long"
            )
        if name in self.registered:
            return b"ERR Function already exists in the library"
        self.registered[name] = FunctionInfo(name, b"", callback, frozenset(flags), description)
        return None


class RedisCallError(Exception):
    """Raised through Lua by ``redis.call`` when the command fails; carries the error text."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _error_text(error: Any) -> bytes | None:
    """The error text of a ``redis.call`` failure seen by Lua, or ``None`` for other errors."""
    if isinstance(error, RedisCallError):
        return error.message.encode("utf-8", "surrogateescape")
    return None


def sidecar_noreplicas() -> str:
    """The NOREPLICAS error text."""
    from stratacache.resp.sidecar import NOREPLICAS

    return NOREPLICAS.message


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if value is None:
        return b""
    return str(value).encode("utf-8", "surrogateescape")


def _bit_args(args: tuple[Any, ...]) -> list[int]:
    return [int(float(arg)) & 0xFFFFFFFF for arg in args]


def _band(*args: Any) -> int:
    result = 0xFFFFFFFF
    for arg in _bit_args(args):
        result &= arg
    return _int32(result)


def _bor(*args: Any) -> int:
    result = 0
    for arg in _bit_args(args):
        result |= arg
    return _int32(result)


def _bxor(*args: Any) -> int:
    result = 0
    for arg in _bit_args(args):
        result ^= arg
    return _int32(result)


def _tohex(value: Any, digits: Any = 8) -> bytes:
    number = int(float(value)) & 0xFFFFFFFF
    count = int(digits)
    width = min(abs(count), 8)
    text = f"{number & ((1 << (4 * width)) - 1):0{width}x}"
    return (text.upper() if count < 0 else text).encode()


_BIT_FUNCTIONS: Final = {
    "tobit": lambda value: _int32(int(float(value))),
    "tohex": _tohex,
    "bnot": lambda value: _int32(~int(float(value))),
    "band": _band,
    "bor": _bor,
    "bxor": _bxor,
    "lshift": lambda value, n: _int32(int(float(value)) << (int(n) & 31)),
    "rshift": lambda value, n: _int32((int(float(value)) & 0xFFFFFFFF) >> (int(n) & 31)),
    "arshift": lambda value, n: _int32(_int32(int(float(value))) >> (int(n) & 31)),
    "rol": lambda value, n: _int32(
        ((int(float(value)) & 0xFFFFFFFF) << (int(n) & 31))
        | ((int(float(value)) & 0xFFFFFFFF) >> (32 - (int(n) & 31)))
    ),
    "ror": lambda value, n: _int32(
        ((int(float(value)) & 0xFFFFFFFF) >> (int(n) & 31))
        | ((int(float(value)) & 0xFFFFFFFF) << (32 - (int(n) & 31)))
    ),
    "bswap": lambda value: _int32(
        int.from_bytes((int(float(value)) & 0xFFFFFFFF).to_bytes(4, "big"), "little")
    ),
}


def parse_shebang(body: bytes) -> tuple[frozenset[str], int, bool]:
    """EVAL's ``#!lua flags=...`` line: ``(flags, length of the line, compat mode)``."""
    if not body.startswith(b"#!"):
        return frozenset(), 0, True
    end = body.find(b"\n")
    if end < 0:
        raise CommandError("ERR Invalid script shebang")
    parts = body[:end].split()
    if not parts or parts[0] != b"#!lua":
        engine = parts[0].decode("utf-8", "replace") if parts else ""
        raise CommandError(f"ERR Unexpected engine in script shebang: {engine}")
    flags: set[str] = set()
    for part in parts[1:]:
        if not part.startswith(b"flags="):
            raise CommandError(f"ERR Unknown lua shebang option: {part.decode('utf-8', 'replace')}")
        for flag in part[6:].split(b","):
            if not flag:
                continue
            text = flag.decode("utf-8", "replace")
            if text not in _FLAGS:
                raise CommandError(f"ERR Unexpected flag in script shebang: {text}")
            flags.add(text)
    return frozenset(flags), end, False


class ScriptEngine:
    """The scripts and function libraries of one sidecar."""

    def __init__(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar
        self.scripts: dict[str, Script] = {}
        self.libraries: dict[bytes, Library] = {}
        self.functions: dict[bytes, FunctionInfo] = {}
        self.current: _Run | None = None
        self._eval_env: LuaEnvironment | None = None
        self._function_env: LuaEnvironment | None = None
        self._client = Session(sidecar, 0, "lua", "")
        self._client.in_script = True
        _lupa()  # fail fast, with the extra's name, when lupa is missing

    def lua_memory(self) -> int:
        """Bytes the EVAL runtime's Lua heap holds (INFO used_memory_lua)."""
        return self._eval_env.lua_memory() if self._eval_env is not None else 0

    @property
    def eval_env(self) -> LuaEnvironment:
        """The runtime of EVAL scripts."""
        if self._eval_env is None:
            self._eval_env = LuaEnvironment(self, for_functions=False)
        return self._eval_env

    @property
    def function_env(self) -> LuaEnvironment:
        """The runtime of function libraries."""
        if self._function_env is None:
            self._function_env = LuaEnvironment(self, for_functions=True)
        return self._function_env

    # -- EVAL

    def load(self, body: bytes) -> Script:
        """SCRIPT LOAD / EVAL: compile ``body`` once and cache it under its SHA1."""
        sha = hashlib.sha1(body).hexdigest()
        script = self.scripts.get(sha)
        if script is not None:
            return script
        flags, shebang, compat = parse_shebang(body)
        function = self.eval_env.compile(body[shebang:], b"@user_script")
        script = Script(sha, body, function, flags, compat)
        self.scripts[sha] = script
        return script

    def flush_scripts(self) -> None:
        """SCRIPT FLUSH: forget every script and start a fresh runtime."""
        self.scripts.clear()
        self._eval_env = None

    def run_script(
        self, caller: Session, script: Script, keys: list[bytes], args: list[bytes], *, ro: bool
    ) -> object:
        """Run an EVAL script for ``caller``."""
        if not script.compat and "no-writes" not in script.flags:
            if ro:
                raise CommandError(
                    "ERR Can not execute a script with write flag using *_ro command."
                )
            if self.sidecar.min_replicas:
                raise CommandError(sidecar_noreplicas())
        readonly = ro or (not script.compat and "no-writes" in script.flags)
        return self._run(
            caller,
            self.eval_env,
            script.function,
            keys,
            args,
            funcname=("f_" + script.sha).encode(),
            readonly=readonly,
            as_function=False,
        )

    # -- FUNCTION

    def load_library(self, code: bytes, *, replace: bool) -> bytes:
        """FUNCTION LOAD: register a library's functions; returns its name."""
        name, body = _library_metadata(code)
        existing = self.libraries.get(name)
        if existing is not None and not replace:
            raise CommandError(f"ERR Library '{name.decode('utf-8', 'replace')}' already exists")
        functions = self.function_env.load_library(body)
        if not functions:
            raise CommandError("ERR No functions registered")
        for function_name in functions:
            owner = self.functions.get(function_name)
            if owner is not None and owner.library != name:
                raise CommandError(
                    f"ERR Function {function_name.decode('utf-8', 'replace')} already exists"
                )
        if existing is not None:
            for function_name in existing.functions:
                self.functions.pop(function_name, None)
        library = Library(name, code)
        for function_name, info in functions.items():
            info.library = name
            library.functions[function_name] = info
            self.functions[function_name] = info
        self.libraries[name] = library
        return name

    def delete_library(self, name: bytes) -> None:
        """FUNCTION DELETE."""
        library = self.libraries.pop(name, None)
        if library is None:
            raise CommandError("ERR Library not found")
        for function_name in library.functions:
            self.functions.pop(function_name, None)

    def flush_functions(self) -> None:
        """FUNCTION FLUSH: drop every library and start a fresh runtime."""
        self.libraries.clear()
        self.functions.clear()
        self._function_env = None

    def call_function(
        self, caller: Session, name: bytes, keys: list[bytes], args: list[bytes], *, ro: bool
    ) -> object:
        """FCALL / FCALL_RO."""
        info = self.functions.get(name)
        if info is None:
            raise CommandError("ERR Function not found")
        if "no-writes" not in info.flags:
            if ro:
                raise CommandError(
                    "ERR Can not execute a script with write flag using *_ro command."
                )
            if self.sidecar.min_replicas:
                raise CommandError(sidecar_noreplicas())
        return self._run(
            caller,
            self.function_env,
            info.callback,
            keys,
            args,
            funcname=name,
            readonly=ro or "no-writes" in info.flags,
            as_function=True,
        )

    # -- running

    def _run(
        self,
        caller: Session,
        env: LuaEnvironment,
        function: Any,
        keys: list[bytes],
        args: list[bytes],
        *,
        funcname: bytes,
        readonly: bool,
        as_function: bool,
    ) -> object:
        if self.current is not None:
            raise CommandError("ERR scripts cannot call scripts")
        client = self._client
        client.select(caller.db_index)
        client.resp = 2
        client.in_exec = caller.in_exec
        config = self.sidecar.config
        limit_ms = int(config.get("strata-script-time-limit"))
        busy_ms = int(config.get("lua-time-limit"))
        started = time.monotonic()
        deadline = started + (limit_ms / 1000 if limit_ms > 0 else 3600.0)
        self.current = _Run(
            caller,
            client,
            readonly,
            deadline,
            busy_at=started + max(busy_ms, 0) / 1000,
            is_eval=not as_function,
        )
        try:
            return env.run(function, keys, args, caller.resp, funcname, as_function=as_function)
        finally:
            self.current = None
            self.sidecar.busy = None

    def serve_while_busy(self, run: _Run) -> None:
        """The script has run past ``lua-time-limit``: let the server answer the others."""
        sidecar = self.sidecar
        if sidecar.busy is None:
            sidecar.busy = BUSY_EVAL if run.is_eval else BUSY_FUNCTION
            logger.warning("a script has been running for more than lua-time-limit; answering BUSY")
        poller = sidecar.busy_poller
        if poller is not None:
            keyspace = sidecar.keyspace
            now = keyspace.now  # the script's instant, whatever the others' commands read
            try:
                poller(run.caller)
            finally:
                keyspace.now = now

    def kill(self, *, is_eval: bool) -> object:
        """SCRIPT KILL (``is_eval``) or FUNCTION KILL: stop the script that keeps the server
        busy, unless it wrote."""
        run = self.current
        if run is None or self.sidecar.busy is None:
            raise CommandError(_NOTBUSY)
        if run.wrote:
            raise CommandError(_UNKILLABLE)
        if is_eval and not run.is_eval:
            raise CommandError(BUSY_FUNCTION.message)
        if not is_eval and run.is_eval:
            raise CommandError(BUSY_EVAL.message)
        run.killed = True
        return OK


def _library_metadata(code: bytes) -> tuple[bytes, bytes]:
    """The library name from ``#!lua name=<name>``, and the code to run (line numbers kept)."""
    if not code.startswith(b"#!"):
        raise CommandError("ERR Missing library metadata")
    end = code.find(b"\n")
    if end < 0:
        raise CommandError("ERR Invalid library metadata")
    parts = code[:end].split()
    if not parts:
        raise CommandError("ERR Invalid library metadata")
    engine = parts[0][2:]
    name: bytes | None = None
    for part in parts[1:]:
        if part.startswith(b"name="):
            if name is not None:
                raise CommandError(
                    "ERR Invalid metadata value, name argument was given multiple times"
                )
            name = part[5:]
        else:
            raise CommandError(
                f"ERR Invalid metadata value given: {part.decode('utf-8', 'replace')}"
            )
    if name is None:
        raise CommandError("ERR Library name was not given")
    if not _NAME_RE.fullmatch(name):
        raise CommandError(
            "ERR Library names can only contain letters, numbers, or underscores(_) and must be "
            "at least one character long"
        )
    if engine.lower() != b"lua":
        raise CommandError(f"ERR Engine '{engine.decode('utf-8', 'replace')}' not found")
    return name, code[end:]
