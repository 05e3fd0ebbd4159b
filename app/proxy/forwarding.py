"""What a proxied request becomes on its way to the upstream, and back. Pure functions.

The target URL is the upstream's configured base with the client's path appended,
as raw bytes, on a copy of the base URL: the scheme, host and port always come from
the configuration, so no path can make the gateway call another host. Paths that try
to climb out of the base path, or that look like another URL, are refused before
that, in every encoding a server or a library along the way might decode.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import unquote

import httpx

from .errors import BadRequest, UnknownUpstream, UnsafePath

# RFC 9110 section 7.6.1, plus the proxy-only ones: they describe one connection.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# A decoder applied this many times more than the gateway checked could still find
# something: past it, the path is refused rather than guessed at.
_DECODING_ROUNDS = 3


def split_target(raw_path: bytes) -> tuple[bytes, bytes]:
    """The upstream segment and the tail of ``/proxy/<upstream>/<tail>``, as sent.

    >>> split_target(b"/proxy/payments/v1/orders%2F7")
    (b'payments', b'v1/orders%2F7')
    """
    parts = raw_path.split(b"/", 3)  # b"", b"proxy", <upstream>, <tail>
    segment = parts[2] if len(parts) > 2 else b""
    return segment, parts[3] if len(parts) > 3 else b""


def check_segment(raw: bytes, name: str) -> None:
    """Refuse an upstream segment that is not the upstream's name exactly as written:
    the router decodes ``%2F`` into a slash, so ``sec%2F..%2Fx`` would otherwise
    route to ``sec`` with part of the path silently gone.

    >>> check_segment(b"payments", "payments")
    >>> check_segment(b"pay%6Dents", "payments")
    Traceback (most recent call last):
    ...
    app.proxy.errors.UnsafePath: the upstream's name must be sent as it is, not percent-encoded
    """
    if raw == name.encode():
        return
    if b"%" in raw:
        raise UnsafePath("the upstream's name must be sent as it is, not percent-encoded")
    raise UnknownUpstream(f"no upstream named {raw.decode('latin-1')!r}")


def check_tail(raw: bytes) -> None:
    """Refuse a path (after ``/proxy/<upstream>/``) that could leave the upstream's base.

    >>> check_tail(b"v1/orders/42")
    >>> check_tail(b"..%2Fadmin")
    Traceback (most recent call last):
    ...
    app.proxy.errors.UnsafePath: the path climbs out of the upstream's base ('..')
    """
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise UnsafePath("the path must be ASCII, with other bytes percent-encoded") from None
    for _ in range(_DECODING_ROUNDS):
        _check_decoded(text)
        decoded = unquote(text, errors="surrogateescape")
        if decoded == text:
            return
        text = decoded
    _check_decoded(text)
    if unquote(text, errors="surrogateescape") != text:
        raise UnsafePath(f"the path is percent-encoded more than {_DECODING_ROUNDS} times")


def has_control_character(text: str) -> bool:
    """Whether ``text`` holds an ASCII control character (CR, LF, NUL, DEL, ...)."""
    return any(ord(char) < 0x20 or ord(char) == 0x7F for char in text)


def _check_decoded(text: str) -> None:
    if has_control_character(text):
        raise UnsafePath("the path holds a control character")
    if "\\" in text:
        raise UnsafePath("the path holds a backslash")
    if text.startswith("/"):
        raise UnsafePath("the path starts with '//', the form of another host")
    segments = text.split("/")
    for segment in segments:
        if segment in (".", ".."):
            raise UnsafePath(f"the path climbs out of the upstream's base ({segment!r})")
    if ":" in segments[0]:
        raise UnsafePath("the path looks like an absolute URL")


def target_url(base: httpx.URL, raw_tail: bytes, raw_query: bytes) -> httpx.URL:
    """The upstream URL for a checked path and query, on ``base``'s origin."""
    check_tail(raw_tail)
    path = base.raw_path.split(b"?", 1)[0].rstrip(b"/") + b"/" + raw_tail
    url = base.copy_with(raw_path=path + (b"?" + raw_query if raw_query else b""))
    if (url.scheme, url.host, url.port) != (base.scheme, base.host, base.port):
        raise UnsafePath("the path would change the upstream's host")  # never, by construction
    return url


def _dropped(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """Hop-by-hop headers, and the ones a ``Connection`` header names."""
    dropped = {name.encode() for name in HOP_BY_HOP}
    for name, value in headers:
        if name.lower() == b"connection":
            dropped.update(token.strip().lower() for token in value.split(b",") if token.strip())
    return dropped


#: Received-by of the ``Via`` the gateway adds (RFC 9110 section 7.6.3): a pseudonym,
#: so that no host name or port leaks to the upstream.
VIA = b"1.1 fleetbreaker"


def request_headers(
    raw: list[tuple[bytes, bytes]], *, client_host: str | None, scheme: str
) -> list[tuple[bytes, bytes]]:
    """The client's headers, minus hop-by-hop ones and ``Host``, plus ``Via`` and
    X-Forwarded-*. Nothing else is added: the upstream gets exactly what the client
    sent, so a client that never asked for compression never gets it."""
    dropped = _dropped(raw) | {b"host"}
    forwarded_for = b""
    host = b""
    proto = b""
    via = b""
    kept = []
    for name, value in raw:
        lowered = name.lower()
        if lowered in dropped:
            if lowered == b"host":
                host = value
            continue
        if lowered == b"x-forwarded-for":
            forwarded_for = value if not forwarded_for else forwarded_for + b", " + value
            continue
        if lowered == b"via":
            via = value if not via else via + b", " + value
            continue
        if lowered == b"x-forwarded-proto":
            proto = proto or value
        if lowered == b"x-forwarded-host":
            host = b""  # an earlier proxy already said which host the client asked for
        kept.append((lowered, value))
    if client_host:
        client = client_host.encode()
        forwarded_for = forwarded_for + b", " + client if forwarded_for else client
    if forwarded_for:
        kept.append((b"x-forwarded-for", forwarded_for))
    if not proto:
        kept.append((b"x-forwarded-proto", scheme.encode()))
    if host:
        kept.append((b"x-forwarded-host", host))
    kept.append((b"via", via + b", " + VIA if via else VIA))
    return kept


#: Upstream response headers that widen what the upstream's content may do beyond its
#: own path: ``Service-Worker-Allowed`` lets a service worker script claim any scope
#: of the origin, and every upstream shares the proxy's origin.
WIDENING = frozenset({b"service-worker-allowed"})


def response_headers(raw: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The upstream's headers minus hop-by-hop ones and ``WIDENING`` ones, repeated
    headers kept. ``Date`` and ``Server`` are the gateway's own (uvicorn adds them):
    the upstream's would be sent twice.

    >>> response_headers([(b"Service-Worker-Allowed", b"/"), (b"X-Kept", b"1")])
    [(b'x-kept', b'1')]
    """
    dropped = _dropped(raw) | {b"date", b"server"} | WIDENING
    return [(name.lower(), value) for name, value in raw if name.lower() not in dropped]


def declared_length(raw: list[tuple[bytes, bytes]]) -> int | None:
    """The request's Content-Length, or None; a malformed one is a bad request."""
    values = {value.strip() for name, value in raw if name.lower() == b"content-length"}
    if not values:
        return None
    if len(values) > 1 or not next(iter(values)).isdigit():
        raise BadRequest("Content-Length is malformed")
    return int(next(iter(values)))
