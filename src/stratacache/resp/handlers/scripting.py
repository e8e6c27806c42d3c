"""Scripting commands: EVAL, EVALSHA, EVAL_RO, EVALSHA_RO, SCRIPT, FUNCTION, FCALL, FCALL_RO."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from stratacache.errors import RecordFormatError
from stratacache.resp.handlers._args import SYNTAX
from stratacache.resp.protocol import OK, CommandError, SimpleString
from stratacache.resp.spec import CommandSpec, command
from stratacache.resp.values import glob_match, parse_int

if TYPE_CHECKING:
    from stratacache.resp.session import Session

__all__ = ["COMMANDS"]

_NOSCRIPT: Final = "NOSCRIPT No matching script. Please use EVAL."
_NOTBUSY: Final = "NOTBUSY No scripts in execution right now."


def _numkeys(argv: list[bytes], error: str | None = None) -> int:
    numkeys = parse_int(argv[2])
    if numkeys is None:
        raise CommandError(error or "ERR value is not an integer or out of range")
    if numkeys > len(argv) - 3:
        raise CommandError("ERR Number of keys can't be greater than number of args")
    if numkeys < 0:
        raise CommandError("ERR Number of keys can't be negative")
    return numkeys


def _eval(s: Session, argv: list[bytes], *, by_sha: bool, ro: bool) -> object:
    engine = s.sidecar.script_engine()
    if by_sha and len(argv[1]) != 40:
        raise CommandError(_NOSCRIPT)
    numkeys = _numkeys(argv)
    if by_sha:
        script = engine.scripts.get(argv[1].lower().decode("ascii", "replace"))
        if script is None:
            raise CommandError(_NOSCRIPT)
    else:
        script = engine.load(argv[1])
    keys = argv[3 : 3 + numkeys]
    args = argv[3 + numkeys :]
    return engine.run_script(s, script, keys, args, ro=ro)


def eval_(s: Session, argv: list[bytes]) -> object:
    """EVAL script numkeys [key ...] [arg ...]."""
    return _eval(s, argv, by_sha=False, ro=False)


def evalsha(s: Session, argv: list[bytes]) -> object:
    """EVALSHA sha1 numkeys [key ...] [arg ...]."""
    return _eval(s, argv, by_sha=True, ro=False)


def eval_ro(s: Session, argv: list[bytes]) -> object:
    """EVAL_RO script numkeys [key ...] [arg ...]."""
    return _eval(s, argv, by_sha=False, ro=True)


def evalsha_ro(s: Session, argv: list[bytes]) -> object:
    """EVALSHA_RO sha1 numkeys [key ...] [arg ...]."""
    return _eval(s, argv, by_sha=True, ro=True)


def script_load(s: Session, argv: list[bytes]) -> object:
    """SCRIPT LOAD script."""
    return s.sidecar.script_engine().load(argv[2]).sha.encode()


def script_exists(s: Session, argv: list[bytes]) -> object:
    """SCRIPT EXISTS sha1 [sha1 ...]."""
    scripts = s.sidecar.script_engine().scripts
    return [1 if sha.lower().decode("ascii", "replace") in scripts else 0 for sha in argv[2:]]


def script_flush(s: Session, argv: list[bytes]) -> object:
    """SCRIPT FLUSH [ASYNC|SYNC]."""
    if len(argv) > 3 or (len(argv) == 3 and argv[2].upper() not in (b"ASYNC", b"SYNC")):
        raise CommandError("ERR SCRIPT FLUSH only support SYNC|ASYNC option")
    s.sidecar.script_engine().flush_scripts()
    return OK


def script_kill(s: Session, argv: list[bytes]) -> object:
    """SCRIPT KILL: stop the EVAL script that keeps the server busy (if it has not written)."""
    engine = s.sidecar.scripts
    if engine is None:
        raise CommandError(_NOTBUSY)
    return engine.kill(is_eval=True)


def script_help(s: Session, argv: list[bytes]) -> object:
    """SCRIPT HELP."""
    return [
        b"SCRIPT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        b"EXISTS <sha1> [<sha1> ...]",
        b"    Return information about the existence of the scripts in the script cache.",
        b"FLUSH [ASYNC|SYNC]",
        b"    Flush the Lua scripts cache.",
        b"KILL",
        b"    Kill the currently executing Lua script.",
        b"LOAD <script>",
        b"    Load a script into the scripts cache without executing it.",
        b"HELP",
        b"    Print this help.",
    ]


# --------------------------------------------------------------------------- FUNCTION


def function_load(s: Session, argv: list[bytes]) -> object:
    """FUNCTION LOAD [REPLACE] code."""
    replace = False
    index = 2
    while index < len(argv) - 1:
        if argv[index].upper() == b"REPLACE":
            replace = True
        else:
            raise CommandError(
                f"ERR Unknown option given: {argv[index].decode('utf-8', 'replace')}"
            )
        index += 1
    if index != len(argv) - 1:
        raise CommandError("ERR Function code is missing")
    return s.sidecar.script_engine().load_library(argv[-1], replace=replace)


def function_delete(s: Session, argv: list[bytes]) -> object:
    """FUNCTION DELETE library-name."""
    s.sidecar.script_engine().delete_library(argv[2])
    return OK


def function_flush(s: Session, argv: list[bytes]) -> object:
    """FUNCTION FLUSH [ASYNC|SYNC]."""
    if len(argv) > 3 or (len(argv) == 3 and argv[2].upper() not in (b"ASYNC", b"SYNC")):
        raise CommandError("ERR FUNCTION FLUSH only supports SYNC|ASYNC option")
    if s.sidecar.scripts is not None:  # nothing to flush before the first script
        s.sidecar.scripts.flush_functions()
    return OK


def function_list(s: Session, argv: list[bytes]) -> object:
    """FUNCTION LIST [LIBRARYNAME pattern] [WITHCODE]."""
    with_code = False
    pattern: bytes | None = None
    index = 2
    while index < len(argv):
        option = argv[index].upper()
        if option == b"WITHCODE" and not with_code:
            with_code = True
        elif option == b"LIBRARYNAME" and pattern is None:
            if index >= len(argv) - 1:
                raise CommandError("ERR library name argument was not given")
            index += 1
            pattern = argv[index]
        else:
            raise CommandError(f"ERR Unknown argument {argv[index].decode('utf-8', 'replace')}")
        index += 1
    out: list[object] = []
    for library in s.sidecar.script_engine().libraries.values():
        if pattern is not None and not glob_match(pattern, library.name, nocase=True):
            continue
        entry: dict[bytes, object] = {
            b"library_name": library.name,
            b"engine": b"LUA",
            b"functions": [
                {
                    b"name": info.name,
                    b"description": info.description,
                    b"flags": {SimpleString(flag) for flag in info.flags},
                }
                for info in library.functions.values()
            ],
        }
        if with_code:
            entry[b"library_code"] = library.code
        out.append(entry)
    return out


def function_stats(s: Session, argv: list[bytes]) -> object:
    """FUNCTION STATS."""
    engine = s.sidecar.script_engine()
    return {
        b"running_script": None,
        b"engines": {
            b"LUA": {
                b"libraries_count": len(engine.libraries),
                b"functions_count": len(engine.functions),
            }
        },
    }


def function_kill(s: Session, argv: list[bytes]) -> object:
    """FUNCTION KILL: stop the function that keeps the server busy (if it has not written)."""
    engine = s.sidecar.scripts
    if engine is None:
        raise CommandError(_NOTBUSY)
    return engine.kill(is_eval=False)


def function_dump(s: Session, argv: list[bytes]) -> object:
    """FUNCTION DUMP: every library's code, in a payload FUNCTION RESTORE accepts."""
    from stratacache.resp.snapshot import encode_value
    from stratacache.resp.values import ListValue

    codes = [library.code for library in s.sidecar.script_engine().libraries.values()]
    return encode_value(ListValue(codes))


def function_restore(s: Session, argv: list[bytes]) -> object:
    """FUNCTION RESTORE payload [FLUSH|APPEND|REPLACE]."""
    from stratacache.resp.snapshot import decode_value
    from stratacache.resp.values import ListValue

    policy = b"APPEND"
    if len(argv) == 4:
        policy = argv[3].upper()
        if policy not in (b"FLUSH", b"APPEND", b"REPLACE"):
            raise CommandError(
                "ERR Wrong restore policy given, value should be either FLUSH, APPEND or REPLACE."
            )
    elif len(argv) > 4:
        raise CommandError(SYNTAX)
    try:
        value = decode_value(argv[2])
    except RecordFormatError:
        raise CommandError("ERR DUMP payload version or checksum are wrong") from None
    if not isinstance(value, ListValue):
        raise CommandError("ERR given type is not a function")
    engine = s.sidecar.script_engine()
    saved_libraries = dict(engine.libraries)
    saved_functions = dict(engine.functions)
    if policy == b"FLUSH":
        engine.flush_functions()
    try:
        for code in value.items:
            engine.load_library(code, replace=policy == b"REPLACE")
    except CommandError:
        engine.libraries = saved_libraries
        engine.functions = saved_functions
        raise
    return OK


def function_help(s: Session, argv: list[bytes]) -> object:
    """FUNCTION HELP."""
    return [
        b"FUNCTION <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        b"LOAD [REPLACE] <FUNCTION CODE>",
        b"DELETE <LIBRARY NAME>",
        b"LIST [LIBRARYNAME PATTERN] [WITHCODE]",
        b"FLUSH [ASYNC|SYNC]",
        b"STATS",
        b"KILL",
        b"DUMP",
        b"RESTORE <PAYLOAD> [FLUSH|APPEND|REPLACE]",
        b"HELP",
        b"    Print this help.",
    ]


def _fcall(s: Session, argv: list[bytes], *, ro: bool) -> object:
    engine = s.sidecar.script_engine()
    if argv[1] not in engine.functions:
        raise CommandError("ERR Function not found")
    numkeys = _numkeys(argv, "ERR Bad number of keys provided")
    keys = argv[3 : 3 + numkeys]
    return engine.call_function(s, argv[1], keys, argv[3 + numkeys :], ro=ro)


def fcall(s: Session, argv: list[bytes]) -> object:
    """FCALL function numkeys [key ...] [arg ...]."""
    return _fcall(s, argv, ro=False)


def fcall_ro(s: Session, argv: list[bytes]) -> object:
    """FCALL_RO function numkeys [key ...] [arg ...]."""
    return _fcall(s, argv, ro=True)


def _script_keys(argv: list[bytes]) -> list[bytes]:
    numkeys = parse_int(argv[2]) if len(argv) > 2 else None
    if numkeys is None or numkeys <= 0:
        return []
    return argv[3 : 3 + numkeys]


_SCRIPTING = "scripting"
_EVAL_FLAGS = "noscript stale"

COMMANDS: Final[tuple[CommandSpec, ...]] = (
    command(
        "eval", -3, _EVAL_FLAGS, eval_, group=_SCRIPTING, since="2.6.0", key_finder=_script_keys
    ),
    command(
        "evalsha",
        -3,
        _EVAL_FLAGS,
        evalsha,
        group=_SCRIPTING,
        since="2.6.0",
        key_finder=_script_keys,
    ),
    command(
        "eval_ro",
        -3,
        _EVAL_FLAGS + " readonly",
        eval_ro,
        group=_SCRIPTING,
        since="7.0.0",
        key_finder=_script_keys,
    ),
    command(
        "evalsha_ro",
        -3,
        _EVAL_FLAGS + " readonly",
        evalsha_ro,
        group=_SCRIPTING,
        since="7.0.0",
        key_finder=_script_keys,
    ),
    command(
        "fcall", -3, _EVAL_FLAGS, fcall, group=_SCRIPTING, since="7.0.0", key_finder=_script_keys
    ),
    command(
        "fcall_ro",
        -3,
        _EVAL_FLAGS + " readonly",
        fcall_ro,
        group=_SCRIPTING,
        since="7.0.0",
        key_finder=_script_keys,
    ),
    command(
        "script",
        -2,
        "",
        None,
        group=_SCRIPTING,
        since="2.6.0",
        subcommands=(
            command("script|load", 3, "noscript stale", script_load, group=_SCRIPTING),
            command("script|exists", -3, "noscript", script_exists, group=_SCRIPTING),
            command("script|flush", -2, "noscript", script_flush, group=_SCRIPTING),
            command("script|kill", 2, "noscript allow_busy", script_kill, group=_SCRIPTING),
            command("script|help", 2, "loading stale", script_help, group=_SCRIPTING),
        ),
    ),
    command(
        "function",
        -2,
        "",
        None,
        group=_SCRIPTING,
        since="7.0.0",
        subcommands=(
            command("function|load", -3, "write denyoom noscript", function_load, group=_SCRIPTING),
            command("function|delete", 3, "write noscript", function_delete, group=_SCRIPTING),
            command("function|flush", -2, "write noscript", function_flush, group=_SCRIPTING),
            command("function|list", -2, "noscript", function_list, group=_SCRIPTING),
            command("function|stats", 2, "noscript allow_busy", function_stats, group=_SCRIPTING),
            command("function|kill", 2, "noscript allow_busy", function_kill, group=_SCRIPTING),
            command("function|dump", 2, "noscript", function_dump, group=_SCRIPTING),
            command(
                "function|restore",
                -3,
                "write denyoom noscript",
                function_restore,
                group=_SCRIPTING,
            ),
            command("function|help", 2, "loading stale", function_help, group=_SCRIPTING),
        ),
    ),
)
