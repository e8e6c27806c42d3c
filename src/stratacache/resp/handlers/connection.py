"""Connection commands: PING, ECHO, HELLO, AUTH, SELECT, QUIT, RESET, CLIENT ..."""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Final

from stratacache.resp.handlers._args import SYNTAX, int_arg
from stratacache.resp.protocol import OK, PONG, CommandError, SimpleString, Verbatim
from stratacache.resp.session import REPLY_OFF, REPLY_ON, REPLY_SKIP
from stratacache.resp.spec import CommandSpec, command
from stratacache.resp.values import parse_int

if TYPE_CHECKING:
    from stratacache.resp.session import Session

__all__ = ["COMMANDS", "client_info_line", "reset_session"]

_NO_PASSWORD: Final = (
    "ERR AUTH <password> called without any password configured for the default user. "
    "Are you sure your configuration is correct?"
)
_WRONGPASS: Final = "WRONGPASS invalid username-password pair or user is disabled."


def ping(s: Session, argv: list[bytes]) -> object:
    """PING [message]."""
    if len(argv) > 2:
        raise CommandError("ERR wrong number of arguments for 'ping' command")
    if s.resp == 2 and (s.channels or s.patterns):
        return [b"pong", argv[1] if len(argv) == 2 else b""]
    return PONG if len(argv) == 1 else argv[1]


def echo(s: Session, argv: list[bytes]) -> object:
    """ECHO message."""
    return argv[1]


def _authenticate(s: Session, username: bytes, password: bytes) -> None:
    required = s.sidecar.requirepass
    if username != b"default":
        raise CommandError(_WRONGPASS)
    if not required:
        # Redis's default user has "nopass": any password is accepted when none is set.
        s.authenticated = True
        return
    if not hmac.compare_digest(password, required.encode()):
        raise CommandError(_WRONGPASS)
    s.authenticated = True


def auth(s: Session, argv: list[bytes]) -> object:
    """AUTH [username] password."""
    if len(argv) > 3:
        raise CommandError(SYNTAX)
    if len(argv) == 2 and not s.sidecar.requirepass:
        raise CommandError(_NO_PASSWORD)
    username = argv[1] if len(argv) == 3 else b"default"
    _authenticate(s, username, argv[-1])
    return OK


def _check_client_name(name: bytes) -> None:
    for byte in name:
        if byte < 0x21 or byte > 0x7E:
            raise CommandError(
                "ERR Client names cannot contain spaces, newlines or special characters."
            )


def hello(s: Session, argv: list[bytes]) -> object:
    """HELLO [protover [AUTH username password] [SETNAME clientname]]."""
    version = 0
    index = 1
    if len(argv) >= 2:
        parsed = parse_int(argv[1])
        if parsed is None:
            raise CommandError("ERR Protocol version is not an integer or out of range")
        if parsed < 2 or parsed > 3:
            raise CommandError("NOPROTO unsupported protocol version")
        version = parsed
        index = 2
    credentials: tuple[bytes, bytes] | None = None
    name: bytes | None = None
    while index < len(argv):
        option = argv[index].upper()
        more = len(argv) - 1 - index
        if option == b"AUTH" and more >= 2:
            credentials = (argv[index + 1], argv[index + 2])
            index += 3
        elif option == b"SETNAME" and more >= 1:
            name = argv[index + 1]
            index += 2
        else:
            text = argv[index].decode("utf-8", "replace")
            raise CommandError(f"ERR Syntax error in HELLO option '{text}'")
    if credentials is not None:
        _authenticate(s, *credentials)
    if not s.authenticated:
        raise CommandError(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the "
            "HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and "
            "select the RESP protocol version at the same time"
        )
    if name is not None:
        _check_client_name(name)
        s.name = name
    if version:
        s.resp = version
    from stratacache.resp.sidecar import REDIS_VERSION

    return {
        b"server": b"redis",
        b"version": REDIS_VERSION.encode(),
        b"proto": s.resp,
        b"id": s.id,
        b"mode": b"standalone",
        b"role": b"master",
        b"modules": [],
    }


def select(s: Session, argv: list[bytes]) -> object:
    """SELECT index."""
    index = parse_int(argv[1])
    if index is None or index > 2**31 - 1 or index < -(2**31):
        raise CommandError("ERR value is not an integer or out of range")
    if not 0 <= index < len(s.sidecar.keyspace.dbs):
        raise CommandError("ERR DB index is out of range")
    s.select(index)
    return OK


def quit_(s: Session, argv: list[bytes]) -> object:
    """QUIT: answer OK, then close once the reply is written."""
    s.closing = True
    return OK


def reset_session(s: Session) -> None:
    """Return a session to the state of a new connection (RESET)."""
    sidecar = s.sidecar
    s.multi = None
    s.multi_failed = False
    sidecar.unwatch(s)
    for channel in list(s.channels):
        sidecar.unsubscribe_channel(s, channel)
    for pattern in list(s.patterns):
        sidecar.unsubscribe_pattern(s, pattern)
    s.select(0)
    s.resp = 2
    s.name = b""
    s.no_evict = False
    s.authenticated = not sidecar.requirepass


def reset(s: Session, argv: list[bytes]) -> object:
    """RESET."""
    reset_session(s)
    return SimpleString("RESET")


# --------------------------------------------------------------------------- CLIENT


def client_info_line(s: Session) -> str:
    """One line of CLIENT LIST, in Redis 7.0's format."""
    now = s.sidecar.keyspace.now
    flags = ""
    if s.channels or s.patterns:
        flags += "P"
    if s.multi is not None:
        flags += "x"
    if s.blocked is not None:
        flags += "b"
    if s.watch_dirty:
        flags += "d"
    if s.no_evict:
        flags += "e"
    multi = len(s.multi) if s.multi is not None else -1
    name = s.name.decode("utf-8", "replace")
    lib_name = s.lib_name.decode("utf-8", "replace")
    lib_ver = s.lib_ver.decode("utf-8", "replace")
    return (
        f"id={s.id} addr={s.addr} laddr={s.laddr} fd=-1 name={name} "
        f"age={int(now - s.created)} idle={int(now - s.last_seen)} flags={flags or 'N'} "
        f"db={s.db_index} sub={len(s.channels)} psub={len(s.patterns)} ssub=0 multi={multi} "
        f"qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 "
        f"events=r cmd={s.last_command} user=default redir=-1 resp={s.resp} "
        f"lib-name={lib_name} lib-ver={lib_ver}\n"
    )


def client_id(s: Session, argv: list[bytes]) -> object:
    """CLIENT ID."""
    return s.id


def client_setname(s: Session, argv: list[bytes]) -> object:
    """CLIENT SETNAME name."""
    _check_client_name(argv[2])
    s.name = argv[2]
    return OK


def client_getname(s: Session, argv: list[bytes]) -> object:
    """CLIENT GETNAME."""
    return s.name or None


def client_setinfo(s: Session, argv: list[bytes]) -> object:
    """CLIENT SETINFO LIB-NAME|LIB-VER value."""
    attribute = argv[2].upper()
    value = argv[3]
    if attribute == b"LIB-NAME":
        _check_client_name(value)
        s.lib_name = value
    elif attribute == b"LIB-VER":
        _check_client_name(value)
        s.lib_ver = value
    else:
        raise CommandError(f"ERR Unrecognized option '{argv[2].decode('utf-8', 'replace')}'")
    return OK


def client_info(s: Session, argv: list[bytes]) -> object:
    """CLIENT INFO."""
    return Verbatim(client_info_line(s))


def client_list(s: Session, argv: list[bytes]) -> object:
    """CLIENT LIST [TYPE normal|master|replica|pubsub] [ID id ...]."""
    sessions = list(s.sidecar.sessions.values())
    index = 2
    while index < len(argv):
        option = argv[index].upper()
        if option == b"TYPE" and index + 1 < len(argv):
            kind = argv[index + 1].lower()
            if kind == b"pubsub":
                sessions = [x for x in sessions if x.channels or x.patterns]
            elif kind == b"normal":
                sessions = [x for x in sessions if not (x.channels or x.patterns)]
            elif kind in (b"master", b"replica", b"slave"):
                sessions = []
            else:
                raise CommandError(
                    f"ERR Unknown client type '{argv[index + 1].decode('utf-8', 'replace')}'"
                )
            index += 2
        elif option == b"ID" and index + 1 < len(argv):
            ids = set()
            for raw in argv[index + 1 :]:
                value = parse_int(raw)
                if value is None or value <= 0:
                    raise CommandError("ERR Invalid client ID")
                ids.add(value)
            sessions = [x for x in sessions if x.id in ids]
            index = len(argv)
        else:
            raise CommandError(SYNTAX)
    return Verbatim("".join(client_info_line(x) for x in sessions))


def client_kill(s: Session, argv: list[bytes]) -> object:
    """CLIENT KILL addr:port | [ID id] [ADDR addr] [LADDR addr] [TYPE type] [SKIPME yes/no]."""
    sessions = s.sidecar.sessions
    if len(argv) == 3:
        for other in list(sessions.values()):
            if other.addr.encode() == argv[2]:
                _kill(s, other)
                return OK
        raise CommandError("ERR No such client")
    if len(argv) % 2:
        raise CommandError(SYNTAX)
    candidates = list(sessions.values())
    skip_me = True
    for index in range(2, len(argv), 2):
        option, value = argv[index].upper(), argv[index + 1]
        if option == b"ID":
            client = parse_int(value)
            if client is None or client <= 0:
                raise CommandError("ERR client-id should be greater than 0")
            candidates = [x for x in candidates if x.id == client]
        elif option == b"ADDR":
            candidates = [x for x in candidates if x.addr.encode() == value]
        elif option == b"LADDR":
            candidates = [x for x in candidates if x.laddr.encode() == value]
        elif option == b"TYPE":
            kind = value.lower()
            if kind == b"pubsub":
                candidates = [x for x in candidates if x.channels or x.patterns]
            elif kind == b"normal":
                candidates = [x for x in candidates if not (x.channels or x.patterns)]
            elif kind in (b"master", b"replica", b"slave"):
                candidates = []
            else:
                raise CommandError(f"ERR Unknown client type '{value.decode('utf-8', 'replace')}'")
        elif option == b"USER":
            if value != b"default":
                raise CommandError(f"ERR No such user '{value.decode('utf-8', 'replace')}'")
        elif option == b"SKIPME":
            if value.lower() == b"yes":
                skip_me = True
            elif value.lower() == b"no":
                skip_me = False
            else:
                raise CommandError(SYNTAX)
        else:
            raise CommandError(SYNTAX)
    killed = 0
    for other in candidates:
        if other is s and skip_me:
            continue
        _kill(s, other)
        killed += 1
    return killed


def _kill(s: Session, other: Session) -> None:
    if other is s:
        s.closing = True
    else:
        other.close_hook()


def client_unblock(s: Session, argv: list[bytes]) -> object:
    """CLIENT UNBLOCK id [TIMEOUT|ERROR]."""
    client = int_arg(argv[2])
    error = False
    if len(argv) == 4:
        mode = argv[3].upper()
        if mode == b"ERROR":
            error = True
        elif mode != b"TIMEOUT":
            raise CommandError("ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR")
    elif len(argv) > 4:
        raise CommandError(SYNTAX)
    other = s.sidecar.sessions.get(client)
    if other is None or other.blocked is None:
        return 0
    from stratacache.resp.protocol import NULL_ARRAY, ErrorReply

    if error:
        s.sidecar.time_out(other, ErrorReply("UNBLOCKED client unblocked via CLIENT UNBLOCK"))
    else:
        s.sidecar.time_out(other, NULL_ARRAY)
    return 1


def client_no_evict(s: Session, argv: list[bytes]) -> object:
    """CLIENT NO-EVICT on|off."""
    mode = argv[2].lower()
    if mode not in (b"on", b"off"):
        raise CommandError(SYNTAX)
    s.no_evict = mode == b"on"
    return OK


def client_reply(s: Session, argv: list[bytes]) -> object:
    """CLIENT REPLY ON|OFF|SKIP: silence replies (pub/sub messages are still delivered)."""
    mode = argv[2].upper()
    if mode == b"ON":
        s.reply_mode = REPLY_ON
        return OK
    if mode == b"OFF":
        s.reply_mode = REPLY_OFF
        return OK
    if mode == b"SKIP":
        if s.reply_mode != REPLY_OFF:
            s.reply_mode = REPLY_SKIP
        return OK
    raise CommandError(SYNTAX)


def client_help(s: Session, argv: list[bytes]) -> object:
    """CLIENT HELP."""
    return [
        b"CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        b"GETNAME",
        b"    Return the name of the current connection.",
        b"ID",
        b"    Return the ID of the current connection.",
        b"INFO",
        b"    Return information about the current client connection.",
        b"KILL <ip:port> | <option> <value> [<option> <value> ...]",
        b"    Kill connections (ID, ADDR, LADDR, TYPE, USER, SKIPME).",
        b"LIST [TYPE <type>] [ID <id> [<id> ...]]",
        b"    Return information about client connections.",
        b"NO-EVICT (ON|OFF)",
        b"SETINFO <LIB-NAME|LIB-VER> <value>",
        b"SETNAME <name>",
        b"    Assign the name <name> to the current connection.",
        b"UNBLOCK <clientid> [TIMEOUT|ERROR]",
        b"    Unblock the specified blocked client.",
        b"HELP",
        b"    Print this help.",
    ]


_CONNECTION = "connection"

COMMANDS: Final[tuple[CommandSpec, ...]] = (
    command("ping", -1, "fast subscribed_ok", ping, group=_CONNECTION, summary="Ping the server"),
    command("echo", 2, "fast", echo, group=_CONNECTION, summary="Echo the given string"),
    command(
        "hello",
        -1,
        "noscript loading stale fast no_auth allow_busy",
        hello,
        group=_CONNECTION,
        since="6.0.0",
        summary="Handshake with the server (protocol version, auth, name)",
    ),
    command(
        "auth",
        -2,
        "noscript loading stale fast no_auth allow_busy",
        auth,
        group=_CONNECTION,
        summary="Authenticate to the server",
    ),
    command("select", 2, "loading stale fast", select, group=_CONNECTION, summary="Change the DB"),
    command(
        "quit",
        -1,
        "noscript loading stale fast no_auth allow_busy transaction_control subscribed_ok",
        quit_,
        group=_CONNECTION,
        summary="Close the connection",
    ),
    command(
        "reset",
        1,
        "noscript loading stale fast no_auth allow_busy transaction_control subscribed_ok",
        reset,
        group=_CONNECTION,
        since="6.2.0",
        summary="Reset the connection",
    ),
    command(
        "client",
        -2,
        "",
        None,
        group=_CONNECTION,
        summary="A container for client connection commands",
        subcommands=(
            command("client|id", 2, "noscript loading stale", client_id, group=_CONNECTION),
            command(
                "client|setname", 3, "noscript loading stale", client_setname, group=_CONNECTION
            ),
            command(
                "client|getname", 2, "noscript loading stale", client_getname, group=_CONNECTION
            ),
            command(
                "client|setinfo", 4, "noscript loading stale", client_setinfo, group=_CONNECTION
            ),
            command("client|info", 2, "noscript loading stale", client_info, group=_CONNECTION),
            command(
                "client|list", -2, "admin noscript loading stale", client_list, group=_CONNECTION
            ),
            command(
                "client|kill", -3, "admin noscript loading stale", client_kill, group=_CONNECTION
            ),
            command(
                "client|unblock",
                -3,
                "admin noscript loading stale",
                client_unblock,
                group=_CONNECTION,
            ),
            command(
                "client|no-evict",
                3,
                "admin noscript loading stale",
                client_no_evict,
                group=_CONNECTION,
            ),
            command("client|reply", 3, "noscript loading stale", client_reply, group=_CONNECTION),
            command("client|help", 2, "loading stale", client_help, group=_CONNECTION),
        ),
    ),
)
