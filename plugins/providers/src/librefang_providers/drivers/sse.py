"""Incremental decoders for streamed HTTP bodies: Server-Sent Events and newline-delimited JSON.

Both work on **bytes** and cut only at newline bytes. A newline byte never occurs inside a multi-byte
UTF-8 sequence, so a character split across network chunks is always reassembled before anything is
decoded (``json.loads`` takes the complete line's bytes). Nothing here allocates per byte; one
``split`` per network chunk keeps the hot path short.
"""

from __future__ import annotations

# Bound on a single unterminated line: a provider that never sends a newline must not grow memory
# without limit (16 MiB is far above any real event).
MAX_LINE_BYTES = 16 * 1024 * 1024


class StreamTooLarge(ValueError):
    """A line (event) exceeded :data:`MAX_LINE_BYTES`."""


class SSEDecoder:
    """Feed raw body chunks; get ``(event_name, data_bytes)`` for each complete event.

    Implements the text/event-stream rules that matter for LLM APIs: ``\\n``, ``\\r\\n`` and ``\\r``
    line ends, ``event:`` names, multi-line ``data:`` joined by ``\\n``, ``:`` comments; ``id:`` and
    ``retry:`` are ignored (no reconnection).
    """

    __slots__ = ("_buf", "_event", "_data")

    def __init__(self) -> None:
        self._buf = b""
        self._event = ""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        """Events completed by ``chunk``, in order."""
        buf = self._buf + chunk if self._buf else chunk
        carry = b""
        if b"\r" in buf:
            if buf[-1] == 13:  # a CR at the end may be the first half of CRLF: decide next time
                buf, carry = buf[:-1], b"\r"
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        rest = lines.pop()
        if len(rest) > MAX_LINE_BYTES:
            raise StreamTooLarge("stream line exceeds the size limit")
        self._buf = rest + carry
        out: list[tuple[str, bytes]] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    out.append((self._event, data[0] if len(data) == 1 else b"\n".join(data)))
                    data = self._data = []
                self._event = ""
                continue
            if line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value[:1] == b" " else value)
            elif line.startswith(b"event:"):
                self._event = line[6:].strip().decode("utf-8", "replace")
            # comments (":...") and id/retry fields carry nothing a driver needs
        return out

    def flush(self) -> list[tuple[str, bytes]]:
        """At end of body: the event still pending when the server omitted the final blank line."""
        out = self.feed(b"\n\n") if (self._buf or self._data) else []
        self._buf = b""
        return out


class LineDecoder:
    """Feed raw body chunks; get each complete non-empty line (bytes, without the line end)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self._buf + chunk if self._buf else chunk
        lines = buf.split(b"\n")
        self._buf = lines.pop()
        if len(self._buf) > MAX_LINE_BYTES:
            raise StreamTooLarge("stream line exceeds the size limit")
        return [line for line in lines if line.strip()]

    def flush(self) -> list[bytes]:
        rest, self._buf = self._buf.strip(), b""
        return [rest] if rest else []
