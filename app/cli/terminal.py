"""What a command prints, as a terminal may show it: an event's time in local time, and
every string Redis or a user chose (breaker names, states, reasons, error lines)
through ``shown``, so that a terminal never sees their control characters."""

from __future__ import annotations

import datetime


def local_time(epoch_ms: int, zone: datetime.tzinfo | None = None) -> str:
    """An event's time (epoch ms, Redis's clock) as ISO 8601 in local time, or ``zone``.

    >>> local_time(1795962693548, datetime.timezone.utc)
    '2026-11-29T14:31:33.548+00:00'
    """
    moment = datetime.datetime.fromtimestamp(epoch_ms / 1000, tz=datetime.UTC)
    return moment.astimezone(zone).isoformat(timespec="milliseconds")


def shown(text: str) -> str:
    r"""``text`` as a terminal may print it: each character that is not printable (C0
    and C1 controls, ESC and DEL among them; bidi overrides and other format
    characters; line and paragraph separators; spaces other than ' ') becomes an
    escape, as bash's ``$'...'`` reads it, and so does the backslash, so that no name
    passes for another. Nothing printed can move the cursor, clear the screen, retitle
    the window, reorder a line or add a row.

    >>> shown("evil\x1b[2J\u202eexe")
    'evil\\x1b[2J\\u202eexe'
    """
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(_escape(char) for char in text)


_NAMED_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    if char in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[char]
    if char.isprintable():
        return char
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
