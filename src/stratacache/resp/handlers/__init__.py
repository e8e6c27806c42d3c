"""Command implementations, one module per data type or concern.

Each module exports ``COMMANDS``, a tuple of :class:`~stratacache.resp.commands.CommandSpec`;
:func:`stratacache.resp.commands.build_table` gathers them. A handler takes the calling
:class:`~stratacache.resp.session.Session` and the full argv, returns the reply value, and raises
:class:`~stratacache.resp.protocol.CommandError` with Redis's error text when it refuses.
"""
