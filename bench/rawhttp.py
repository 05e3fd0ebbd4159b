"""An HTTP/1.1 answer read straight off an asyncio stream: for clients that must own
their connection (abort it mid-flight, keep it to one replica) at a rate httpx's
per-request cost would not reach on 2 cores."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RawAnswer:
    status: int
    headers: dict[bytes, bytes]  # names lowercased
    body: bytes


async def read_answer(reader: asyncio.StreamReader) -> RawAnswer:
    """One answer with a ``Content-Length``. ``KeyError`` without one, ``ValueError``
    for a head that is not HTTP, ``asyncio.IncompleteReadError`` if it breaks off."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])
        if value
    }
    body = await reader.readexactly(int(headers[b"content-length"]))
    return RawAnswer(status, headers, body)
