"""Event hooks: external events ("product_updated 123") mapped to invalidations by config rules.

The systems that own the facts an answer was built from know when it goes stale: the catalogue
when a product changes, the CMS when a policy page is edited. They send an *event*, and rules in
the config file say which tags (and namespaces) it invalidates::

    [[events]]
    event = "product_updated"           # the event's name (a glob: "product_*")
    tags = ["product:{0}"]              # {0}, {1}...: the event's arguments; {name}: its fields
    namespaces = ["catalog-{region}"]   # optional

An event arrives as text, ``product_updated 123`` (a name, then arguments separated by
whitespace), or as a JSON object, ``{"event": "product_updated", "args": ["123"], "region":
"eu"}`` (other scalar members are its named fields). Every rule whose ``event`` matches applies;
the tags and namespaces they name are invalidated through :class:`~stratacache.llm.cache.LLMCache`,
so in every tier and, through the shared tier's invalidation channel, on every instance.

Two ways in, both shells over :func:`plan` and :func:`apply`:

* the webhook ``POST /admin/events`` (admin token; :mod:`stratacache.proxy.admin`);
* :class:`EventConsumer`, reading a Redis stream (``XADD events * event "product_updated 123"``;
  a stream keeps what it was sent, so events sent while an instance was disconnected are read
  when it reconnects) or a pub/sub channel (``PUBLISH events "product_updated 123"``; a message
  sent while disconnected is lost, and is logged as a possible gap).

Templates are filled by a small substitution of ``{0}``/``{name}`` placeholders only, never
``str.format`` (whose ``{0.__class__}`` would let an event reach into Python objects); a rendered
tag is checked like a request's ``X-Cache-Tags``, so an event cannot name a malformed tag.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from stratacache.errors import (
    ConfigError,
    MissingExtraError,
    RequestError,
    StrataError,
    TierUnavailableError,
)
from stratacache.llm.keys import validate_namespace
from stratacache.llm.policy import MAX_TAG_CHARS

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "Event",
    "EventConsumer",
    "EventRule",
    "Invalidation",
    "Invalidator",
    "apply",
    "parse_event",
    "parse_events",
    "plan",
    "rules_from_toml",
]

logger = logging.getLogger("stratacache.llm.events")

MAX_EVENT_BYTES = 64 * 1024
"""The longest event accepted (text or JSON)."""
MAX_ARGS = 32
"""The most arguments one event may carry."""

_NAME = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_FIELD = re.compile(r"[0-9]{1,2}|[A-Za-z_][A-Za-z0-9_]{0,63}")


@dataclass(frozen=True, slots=True)
class Event:
    """One external event."""

    name: str
    """What happened: ``product_updated``."""
    args: tuple[str, ...] = ()
    """Its positional arguments: ``("123",)``."""
    fields: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Its named fields (from a JSON event)."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise RequestError(
                f"an event name is 1-128 letters, digits or '_.:-', got {self.name!r}"
            )
        if len(self.args) > MAX_ARGS:
            raise RequestError(f"an event may carry at most {MAX_ARGS} arguments")
        if not all(isinstance(a, str) for a in self.args):
            raise RequestError("event arguments must be strings")
        object.__setattr__(self, "args", tuple(self.args))
        object.__setattr__(self, "fields", MappingProxyType(dict(self.fields)))


@dataclass(frozen=True, slots=True)
class EventRule:
    """Which tags and namespaces an event invalidates."""

    event: str
    """The event names this rule applies to (``fnmatch`` glob: ``product_*``)."""
    tags: tuple[str, ...] = ()
    """Tag templates: ``product:{0}``, ``region:{region}``."""
    namespaces: tuple[str, ...] = ()
    """Namespace templates."""

    def __post_init__(self) -> None:
        if not isinstance(self.event, str) or not self.event:
            raise ConfigError("an event rule needs a non-empty event name (or glob)")
        for name in ("tags", "namespaces"):
            values = getattr(self, name)
            if isinstance(values, str) or not all(isinstance(v, str) and v for v in values):
                raise ConfigError(f"an event rule's {name} must be a list of non-empty strings")
            object.__setattr__(self, name, tuple(values))
            for template in getattr(self, name):
                for placeholder in _PLACEHOLDER.findall(template):
                    if not _FIELD.fullmatch(placeholder):
                        raise ConfigError(
                            f"{template!r}: a placeholder is {{0}}..{{99}} or {{field_name}}, "
                            f"not {{{placeholder}}}"
                        )
        if not self.tags and not self.namespaces:
            raise ConfigError(f"the event rule for {self.event!r} invalidates nothing")

    def matches(self, event: Event) -> bool:
        """Whether this rule applies to ``event``."""
        return fnmatch.fnmatchcase(event.name, self.event)


@dataclass(frozen=True, slots=True)
class Invalidation:
    """What a batch of events invalidates."""

    tags: frozenset[str] = frozenset()
    """Tags to invalidate."""
    namespaces: frozenset[str] = frozenset()
    """Namespaces to invalidate."""
    unmatched: tuple[str, ...] = ()
    """Names of the events no rule applied to."""

    def __bool__(self) -> bool:
        return bool(self.tags or self.namespaces)


class Invalidator(Protocol):
    """What :func:`apply` invalidates through (:class:`~stratacache.llm.cache.LLMCache` is one)."""

    async def invalidate_tag(self, tag: str) -> int:
        """Remove every entry carrying ``tag``; return how many."""
        ...

    async def invalidate_namespace(self, namespace: str) -> int:
        """Remove every entry in ``namespace``; return how many."""
        ...


# --- parsing -------------------------------------------------------------------------------------


def parse_event(raw: str | bytes | Mapping[str, Any]) -> Event:
    """Parse one event: text (``product_updated 123``), JSON text, or a decoded JSON object.

    >>> parse_event("product_updated 123 eu")
    Event(name='product_updated', args=('123', 'eu'), fields=mappingproxy({}))
    """
    if isinstance(raw, bytes | bytearray):
        if len(raw) > MAX_EVENT_BYTES:
            raise RequestError(f"an event may be at most {MAX_EVENT_BYTES} bytes")
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError("an event must be UTF-8 text") from None
    if isinstance(raw, str):
        if len(raw) > MAX_EVENT_BYTES:
            raise RequestError(f"an event may be at most {MAX_EVENT_BYTES} bytes")
        text = raw.strip()
        if not text:
            raise RequestError("an empty event")
        if text.startswith("{"):
            import json

            try:
                obj = json.loads(text)
            except ValueError as exc:
                raise RequestError(f"an event that starts with '{{' must be JSON: {exc}") from None
            return parse_event(obj)
        first, *args = text.split()
        return Event(first, tuple(args))
    if not isinstance(raw, Mapping):
        raise RequestError(f"an event is text or a JSON object, not {type(raw).__name__}")
    name: Any = raw.get("event")
    if not isinstance(name, str):
        raise RequestError('a JSON event needs an "event" string')
    args_raw = raw.get("args", [])
    if not isinstance(args_raw, list):
        args_raw = [args_raw]
    if not all(_scalar(a) for a in args_raw):
        raise RequestError('an event\'s "args" must be strings or numbers')
    words = name.split()
    if len(words) > 1:  # {"event": "product_updated 123"}
        name, args_raw = words[0], [*words[1:], *args_raw]
    fields = {k: _text(v) for k, v in raw.items() if k not in ("event", "args") and _scalar(v)}
    return Event(name if words else "", tuple(_text(a) for a in args_raw), fields)


def parse_events(body: bytes, content_type: str | None) -> list[Event]:
    """The events of a webhook body: a JSON object or array of them, or text, one per line."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        import json

        try:
            obj = json.loads(body)
        except ValueError as exc:
            raise RequestError(f"the body is not valid JSON: {exc}") from None
        items = obj if isinstance(obj, list) else [obj]
        if not items:
            raise RequestError("no events in the body")
        return [parse_event(item) for item in items]
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError("the body must be UTF-8 text or JSON") from None
    events = [parse_event(line) for line in text.splitlines() if line.strip()]
    if not events:
        raise RequestError("no events in the body")
    return events


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float) and not isinstance(value, bool)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


# --- planning and applying -------------------------------------------------------------------------


def plan(rules: Iterable[EventRule], events: Iterable[Event]) -> Invalidation:
    """What ``events`` invalidate under ``rules`` (every matching rule applies).

    Raises :class:`RequestError` when a matching rule needs an argument or field the event does
    not carry, or renders a malformed tag or namespace; nothing is invalidated then.
    """
    rules = tuple(rules)
    tags: set[str] = set()
    namespaces: set[str] = set()
    unmatched: list[str] = []
    for event in events:
        matched = [rule for rule in rules if rule.matches(event)]
        if not matched:
            unmatched.append(event.name)
        for rule in matched:
            for template in rule.tags:
                tags.add(_check_tag(_render(template, event)))
            for template in rule.namespaces:
                namespaces.add(validate_namespace(_render(template, event)))
    return Invalidation(frozenset(tags), frozenset(namespaces), tuple(unmatched))


async def apply(cache: Invalidator, invalidation: Invalidation) -> int:
    """Invalidate what ``invalidation`` names through ``cache``; return the entries removed."""
    deleted = 0
    for tag in sorted(invalidation.tags):
        deleted += await cache.invalidate_tag(tag)
    for namespace in sorted(invalidation.namespaces):
        deleted += await cache.invalidate_namespace(namespace)
    return deleted


def _render(template: str, event: Event) -> str:
    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name.isdigit():
            index = int(name)
            if index >= len(event.args):
                raise RequestError(
                    f"event {event.name!r} has no argument {index} (the rule's {template!r})"
                )
            return event.args[index]
        if name not in event.fields:
            raise RequestError(f"event {event.name!r} has no field {name!r} ({template!r})")
        return event.fields[name]

    return _PLACEHOLDER.sub(fill, template)


def _check_tag(tag: str) -> str:
    if not tag or len(tag) > MAX_TAG_CHARS or "," in tag or "/" in tag or not tag.isprintable():
        raise RequestError(f"an event rendered an invalid tag: {tag!r}")
    return tag


def rules_from_toml(raw: Any, where: str) -> tuple[EventRule, ...]:
    """The ``[[events]]`` array of tables of the config file."""
    if not isinstance(raw, list) or not all(isinstance(t, Mapping) for t in raw):
        raise ConfigError(f"{where}: expected an array of tables ([[events]])")
    known = {"event", "tags", "namespaces"}
    rules = []
    for index, table in enumerate(raw):
        unknown = set(table) - known
        if unknown:
            raise ConfigError(
                f"{where}[{index}]: unknown key(s) {sorted(unknown)} (known: {sorted(known)})"
            )
        fields = dict(table)
        for name in ("tags", "namespaces"):
            if isinstance(fields.get(name), list):
                fields[name] = tuple(fields[name])
            elif name in fields:
                raise ConfigError(f"{where}[{index}].{name}: expected a list of strings")
        try:
            rules.append(EventRule(**fields))
        except (ConfigError, TypeError) as exc:
            raise ConfigError(f"{where}[{index}]: {exc}") from None
    return tuple(rules)


# --- the Redis consumer ------------------------------------------------------------------------------


class EventConsumer:
    """Reads events from a Redis stream or channel and applies ``rules`` to ``cache``.

    :param client: a ``redis.asyncio`` client for its own use (not a tier's: a stream read
        blocks its connection); :meth:`from_url` builds one.
    :param stream: the stream to read (``XREAD``), from the events added once the consumer first
        connected (:meth:`wait_connected`); after a reconnection it continues where it was.
    :param channel: or the pub/sub channel to follow.
    :param retry_delay: seconds between reconnection attempts.
    :param block: seconds one stream read waits for new events.

    A bad event is logged and skipped; it never stops the consumer. Every instance reads every
    event: invalidation is idempotent, and a deployment whose instances do not share a tier needs
    each of them to hear it.
    """

    def __init__(
        self,
        client: Redis,
        cache: Invalidator,
        rules: Iterable[EventRule],
        *,
        stream: str | None = None,
        channel: str | None = None,
        retry_delay: float = 1.0,
        block: float = 5.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        owns_client: bool = False,
    ) -> None:
        if (stream is None) == (channel is None):
            raise ConfigError("give EventConsumer exactly one of stream and channel")
        self._client = client
        self._cache = cache
        self._rules = tuple(rules)
        self._stream = stream
        self._channel = channel
        self._retry_delay = retry_delay
        self._block_ms = max(1, int(block * 1000))
        self._sleep = sleep
        self._owns_client = owns_client
        self._last_id: str | bytes = "$"
        self._task: asyncio.Task[None] | None = None
        self._progress = asyncio.Condition()
        self._connected = False
        self._stop = asyncio.Event()
        self._was_connected = False
        self._sentinels: list[Any] = []
        self.handled = 0
        """Events applied so far."""
        self.rejected = 0
        """Events skipped as malformed or not applicable."""
        self.deleted = 0
        """Entries removed by the events so far."""

    @classmethod
    def from_url(
        cls,
        url: str,
        cache: Invalidator,
        rules: Iterable[EventRule],
        *,
        stream: str | None = None,
        channel: str | None = None,
        retry_delay: float = 1.0,
    ) -> EventConsumer:
        """A consumer with a client of its own on ``url`` (closed with the consumer)."""
        try:
            import redis.asyncio
        except ImportError as exc:
            raise MissingExtraError("redis", "redis") from exc
        try:
            sentinels: list[Any] = []
            if url.startswith("redis+cluster://"):
                from stratacache.tiers.redis import cluster_client

                # No read timeout: a stream read blocks by design (and PING keeps a channel alive).
                options = {"socket_connect_timeout": 5.0, "socket_timeout": None}
                client = cluster_client(url, options)
            elif url.startswith("redis+sentinel://"):
                from stratacache.tiers.redis import sentinel_master

                client, sentinels = sentinel_master(url, {"socket_connect_timeout": 5.0})
            else:
                client = redis.asyncio.Redis.from_url(url, socket_connect_timeout=5.0)
        except ValueError as exc:
            raise ConfigError(f"bad Redis URL: {exc}") from None
        consumer = cls(
            client,
            cache,
            rules,
            stream=stream,
            channel=channel,
            retry_delay=retry_delay,
            owns_client=True,
        )
        consumer._sentinels = sentinels
        return consumer

    @property
    def connected(self) -> bool:
        """Whether the consumer is reading right now."""
        return self._connected

    def start(self) -> None:
        """Start reading, in a task of the running loop (idempotent)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def wait_connected(self, timeout: float = 10.0) -> None:
        """Return once the consumer reads (for tests and start-up checks)."""
        async with asyncio.timeout(timeout), self._progress:
            await self._progress.wait_for(lambda: self._connected)

    async def wait_handled(self, count: int, timeout: float = 10.0) -> None:
        """Return once ``count`` events were handled or rejected in all."""
        async with asyncio.timeout(timeout), self._progress:
            await self._progress.wait_for(lambda: self.handled + self.rejected >= count)

    async def aclose(self) -> None:
        """Stop reading (and close the client if the consumer made it)."""
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            if self._owns_client:
                # Ends a blocking read at once rather than when its block time runs out.
                with contextlib.suppress(Exception):
                    await self._client.connection_pool.disconnect()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._owns_client:
            await self._client.aclose()
            for sentinel in self._sentinels:
                await sentinel.aclose()

    async def handle(self, raw: str | bytes) -> None:
        """Apply one event, counting it as handled or rejected (never raises for bad input)."""
        await self._handle(raw, hold=False)

    async def _handle(self, raw: str | bytes, *, hold: bool) -> None:
        """:meth:`handle`; with ``hold``, a :class:`TierUnavailableError` is raised instead of
        counted, so a stream reader keeps its position and applies the event again once the tier
        is back (an invalidation is idempotent; dropping one would leave stale answers served)."""
        try:
            event = parse_event(raw)
            invalidation = plan(self._rules, [event])
            if invalidation.unmatched:
                raise RequestError(f"no rule for the event {event.name!r}")
            self.deleted += await apply(self._cache, invalidation)
            self.handled += 1
        except TierUnavailableError as exc:
            if hold:
                logger.warning("could not apply an event yet, will retry: %s", exc)
                raise
            self.rejected += 1
            logger.warning("skipping an event: %s", exc)
        except StrataError as exc:
            self.rejected += 1
            logger.warning("skipping an event: %s", exc)
        await self._notify()

    async def _notify(self) -> None:
        async with self._progress:
            self._progress.notify_all()

    async def _run(self) -> None:
        # A cancelled blocking read may surface from redis-py as a connection error rather than
        # as CancelledError, so the loop also checks the flag aclose() sets.
        while not self._stop.is_set():
            try:
                if self._stream is not None:
                    await self._read_stream(self._stream)
                else:
                    assert self._channel is not None
                    await self._follow_channel(self._channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._stop.is_set():
                    return
                if self._connected:
                    logger.warning("lost the event source; reconnecting: %r", exc)
            self._connected = False
            await self._sleep(self._retry_delay)

    async def _ready(self) -> None:
        """A cluster client must know its slots before it can route a command or subscribe."""
        initialize = getattr(self._client, "initialize", None)
        if initialize is not None:
            await initialize()

    async def _read_stream(self, stream: str) -> None:
        await self._ready()
        if self._last_id == "$":
            # Pin the position once, so events added between two reads are never skipped (a
            # read from "$" on every call would miss them); reconnections continue from here.
            newest: Any = await self._client.xrevrange(stream, count=1)
            self._last_id = newest[0][0] if newest else "0-0"
        self._connected = True
        await self._notify()
        while True:
            reply: Any = await self._client.xread(
                {stream: self._last_id}, count=100, block=self._block_ms
            )
            for _name, messages in reply or []:
                for message_id, fields in messages:
                    raw: Any = fields.get(b"event", fields.get("event"))
                    if raw is None:
                        self._last_id = message_id
                        self.rejected += 1
                        logger.warning("a stream entry without an 'event' field: %r", fields)
                        await self._notify()
                        continue
                    # The position moves past an entry only once it is applied (or rejected as
                    # bad): a tier that is down raises out of here, and after the retry delay the
                    # read starts again from this entry.
                    await self._handle(raw, hold=True)
                    self._last_id = message_id

    async def _follow_channel(self, channel: str) -> None:
        await self._ready()
        pubsub = self._client.pubsub()
        try:
            await pubsub.subscribe(channel)
            was_connected = self._was_connected
            while True:
                message = await pubsub.get_message(timeout=self._block_ms / 1000)
                if message is None:
                    await pubsub.ping()
                    continue
                if message.get("type") == "subscribe":
                    if was_connected:
                        logger.warning("events sent on %s while disconnected are lost", channel)
                    self._connected = self._was_connected = True
                    await self._notify()
                elif message.get("type") == "message":
                    await self.handle(message["data"])
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
