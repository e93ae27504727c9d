"""Kapacitor's UDF framing: every message is preceded by its length as a uvarint.

Pure functions over bytes (and one over ``BinaryIO``) so the agent's hot loop and
the tests share the same code. Lengths above :data:`MAX_FRAME` are refused: no real
request comes near it, and trusting a garbage length would make us wait for (or
allocate) gigabytes.
"""

from __future__ import annotations

from typing import BinaryIO, Callable, List, Optional, Tuple

__all__ = [
    "MAX_FRAME",
    "FrameError",
    "FrameSplitter",
    "decode_uvarint",
    "encode_frame",
    "encode_uvarint",
    "read_frame",
]

#: 64 MiB: far above any point or snapshot Kapacitor sends, far below harm.
MAX_FRAME = 64 << 20

_SMALL = [bytes((n,)) for n in range(128)]
# Two-byte varints cover every point and most snapshots: precomputed, they cost a lookup.
_TABLE = _SMALL + [bytes(((n & 0x7F) | 0x80, n >> 7)) for n in range(128, 1 << 14)]


class FrameError(ValueError):
    """The byte stream is not valid framing (bad varint, oversize or truncated frame)."""


def encode_uvarint(value: int) -> bytes:
    """Unsigned LEB128, as Go's ``binary.PutUvarint``."""
    if value < 16384:
        if value < 0:
            raise ValueError("uvarint cannot encode a negative number")
        return _TABLE[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_uvarint(data: bytes, pos: int = 0) -> Tuple[Optional[int], int]:
    """Decode a uvarint at ``pos``: ``(value, next_pos)``, or ``(None, pos)`` if incomplete.

    Raises :class:`FrameError` for a varint longer than 10 bytes or above 64 bits.
    """
    result = 0
    shift = 0
    n = len(data)
    i = pos
    while i < n:
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            if result >> 64:
                raise FrameError("varint overflows 64 bits")
            return result, i
        shift += 7
        if shift >= 70:
            raise FrameError("varint longer than 10 bytes")
    return None, pos


def encode_frame(message: bytes) -> bytes:
    """Length prefix plus message, ready for one ``write``."""
    return encode_uvarint(len(message)) + message


def read_frame(stream: BinaryIO, limit: int = MAX_FRAME) -> Optional[bytes]:
    """Read one frame from a blocking stream; ``None`` on a clean EOF between frames."""
    length = 0
    shift = 0
    first = True
    while True:
        byte = stream.read(1)
        if not byte:
            if first:
                return None
            raise FrameError("truncated frame: EOF inside the length prefix")
        first = False
        b = byte[0]
        length |= (b & 0x7F) << shift
        if b < 0x80:
            break
        shift += 7
        if shift >= 70:
            raise FrameError("varint longer than 10 bytes")
    if length > limit:
        raise FrameError(f"frame of {length} bytes exceeds the {limit}-byte limit")
    body = stream.read(length)
    if len(body) != length:
        raise FrameError(f"truncated frame: expected {length - len(body)} more bytes")
    return body


class FrameSplitter:
    """Turns arbitrary chunks of a byte stream into whole frames.

    Small frames are sliced straight out of each chunk; a frame larger than a
    chunk is gathered in a list and joined once, so a big snapshot costs O(n).

    :meth:`feed_to` adds a fast lane: while ``on_fast`` is set, a frame that is
    exactly one length-delimited field with the two-byte tag ``fast_tag``
    (Kapacitor's point requests) is handed to it as that field's payload, skipping
    a copy and a dispatch. Frames reach the callbacks in stream order, and
    ``on_fast`` is re-read after every ``on_frame`` call, so a frame that changes
    the lane (an Init) takes effect for the very next frame.
    """

    __slots__ = ("_limit", "_rest", "_parts", "_have", "_need", "_tag0", "_tag1", "on_fast")

    def __init__(self, limit: int = MAX_FRAME, fast_tag: bytes = b"\x8a\x01") -> None:
        self._limit = limit
        self._rest = b""
        self._parts: List[bytes] = []
        self._have = 0
        self._need = 0
        self._tag0, self._tag1 = fast_tag[0], fast_tag[1]
        self.on_fast: Optional[Callable[[bytes], object]] = None

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a whole frame."""
        return len(self._rest) + self._have

    def feed(self, chunk: bytes) -> List[bytes]:
        """Add a chunk; return the frames it completes (possibly none)."""
        frames: List[bytes] = []
        self.feed_to(chunk, frames.append)
        return frames

    def feed_to(self, chunk: bytes, on_frame: Callable[[bytes], object]) -> None:
        """Add a chunk; call ``on_frame(frame)`` (or ``on_fast(payload)``) per whole frame."""
        if self._parts:
            self._parts.append(chunk)
            self._have += len(chunk)
            if self._have < self._need:
                return
            data = b"".join(self._parts)
            self._parts = []
            self._have = 0
        elif self._rest:
            data = self._rest + chunk
        else:
            data = chunk
        limit = self._limit
        tag0, tag1 = self._tag0, self._tag1
        on_fast = self.on_fast
        n = len(data)
        pos = 0
        while pos < n:
            b = data[pos]
            if b < 0x80:
                length = b
                start = pos + 1
            elif pos + 1 < n and data[pos + 1] < 0x80:
                # Two-byte lengths (128 B to 16 KiB: every point) decoded inline.
                length = (b & 0x7F) | (data[pos + 1] << 7)
                start = pos + 2
                if length > limit:
                    raise FrameError(f"frame of {length} bytes exceeds the {limit}-byte limit")
            else:
                value, start = decode_uvarint(data, pos)
                if value is None:
                    break
                length = value
                if length > limit:
                    raise FrameError(f"frame of {length} bytes exceeds the {limit}-byte limit")
            end = start + length
            if end > n:
                if end - pos > 65536:
                    self._parts = [data[pos:]]
                    self._have = n - pos
                    self._need = end - pos
                    self._rest = b""
                    return
                break
            if on_fast is not None and length > 3 and data[start] == tag0 and data[start + 1] == tag1:
                # Inner length of one or two varint bytes (every point); else the slow lane.
                b = data[start + 2]
                if b < 0x80:
                    if start + 3 + b == end:
                        pos = end
                        on_fast(data[start + 3 : end])
                        continue
                elif length > 4:
                    b2 = data[start + 3]
                    if b2 < 0x80 and start + 4 + ((b & 0x7F) | (b2 << 7)) == end:
                        pos = end
                        on_fast(data[start + 4 : end])
                        continue
            pos = end
            on_frame(data[start:end])
            on_fast = self.on_fast
        self._rest = data[pos:] if pos < n else b""

    def check_eof(self) -> None:
        """Raise if the stream ended inside a frame."""
        if self._parts:
            raise FrameError(f"truncated frame: expected {self._need - self._have} more bytes")
        if self._rest:
            value, start = decode_uvarint(self._rest, 0)
            if value is None:
                raise FrameError("truncated frame: EOF inside the length prefix")
            raise FrameError(
                f"truncated frame: expected {value - (len(self._rest) - start)} more bytes"
            )
