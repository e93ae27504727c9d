"""Framing: uvarint length prefixes, splitting a stream into frames, limits."""

from __future__ import annotations

import io
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from udf.framing import (
    FrameError,
    FrameSplitter,
    decode_uvarint,
    encode_frame,
    encode_uvarint,
    read_frame,
)


class TestUvarint:
    @given(st.integers(0, 2**64 - 1))
    def test_round_trip(self, n: int) -> None:
        """Every 64-bit value decodes to itself."""
        data = encode_uvarint(n)
        assert decode_uvarint(data) == (n, len(data))

    @pytest.mark.parametrize(
        "n, encoded",
        [(0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (300, b"\xac\x02"), (16384, b"\x80\x80\x01")],
    )
    def test_known_encodings(self, n: int, encoded: bytes) -> None:
        """Multi-byte lengths match Go's binary.PutUvarint."""
        assert encode_uvarint(n) == encoded

    def test_incomplete_is_none(self) -> None:
        """A varint cut short asks for more bytes instead of failing."""
        assert decode_uvarint(b"\x80\x80") == (None, 0)

    def test_overlong_is_error(self) -> None:
        """Eleven continuation bytes cannot be a length."""
        with pytest.raises(FrameError):
            decode_uvarint(b"\xff" * 11)

    def test_negative_refused(self) -> None:
        """Negative numbers have no uvarint."""
        with pytest.raises(ValueError):
            encode_uvarint(-1)


class TestReadFrame:
    def test_frames_then_eof(self) -> None:
        """Frames come back in order and a clean EOF is None."""
        stream = io.BytesIO(encode_frame(b"a") + encode_frame(b"x" * 300) + encode_frame(b""))
        assert read_frame(stream) == b"a"
        assert read_frame(stream) == b"x" * 300
        assert read_frame(stream) == b""
        assert read_frame(stream) is None

    def test_truncated_body(self) -> None:
        """EOF inside a body names how many bytes are missing."""
        with pytest.raises(FrameError, match="expected 7 more bytes"):
            read_frame(io.BytesIO(encode_uvarint(10) + b"abc"))

    def test_truncated_length(self) -> None:
        """EOF inside the length prefix is an error, not a clean end."""
        with pytest.raises(FrameError, match="length prefix"):
            read_frame(io.BytesIO(b"\x80"))

    def test_limit(self) -> None:
        """A length above the limit is refused before reading the body."""
        with pytest.raises(FrameError, match="exceeds"):
            read_frame(io.BytesIO(encode_uvarint(1000)), limit=999)


class TestFrameSplitter:
    @given(
        st.lists(st.binary(max_size=300), max_size=30),
        st.randoms(use_true_random=False),
    )
    def test_any_chunking_yields_same_frames(self, messages: list, rnd: random.Random) -> None:
        """However the stream is cut into chunks, the same frames come out."""
        stream = b"".join(encode_frame(m) for m in messages)
        splitter = FrameSplitter()
        out = []
        pos = 0
        while pos < len(stream):
            step = rnd.randint(1, 64)
            out.extend(splitter.feed(stream[pos : pos + step]))
            pos += step
        splitter.check_eof()
        assert out == messages

    def test_large_frame_in_small_chunks(self) -> None:
        """A frame much larger than the chunks is gathered and returned whole."""
        big = bytes(range(256)) * 2000
        stream = encode_frame(big) + encode_frame(b"next")
        splitter = FrameSplitter()
        out = []
        for i in range(0, len(stream), 4096):
            out.extend(splitter.feed(stream[i : i + 4096]))
        assert out == [big, b"next"]

    def test_eof_inside_frame(self) -> None:
        """check_eof reports a frame left half-read."""
        splitter = FrameSplitter()
        assert splitter.feed(encode_uvarint(5) + b"ab") == []
        with pytest.raises(FrameError, match="3 more bytes"):
            splitter.check_eof()

    def test_oversize_frame(self) -> None:
        """A huge declared length fails at once instead of waiting for the bytes."""
        splitter = FrameSplitter(limit=1024)
        with pytest.raises(FrameError, match="exceeds"):
            splitter.feed(encode_uvarint(1 << 40))


class TestFastLane:
    @given(st.lists(st.one_of(st.binary(min_size=1, max_size=40), st.binary(min_size=100, max_size=400)), max_size=20), st.integers(1, 97))
    def test_fast_lane_sees_payloads_in_order(self, payloads: list, step: int) -> None:
        """Point frames reach on_fast as their payload, others reach on_frame, in stream order."""
        from udf import udf_pb2 as pb

        stream = b""
        expected = []
        for i, payload in enumerate(payloads):
            if i % 3 == 2:
                frame = pb.Request(keepalive=pb.KeepaliveRequest(time=i)).SerializeToString()
                expected.append(("frame", frame))
            else:
                frame = b"\x8a\x01" + encode_uvarint(len(payload)) + payload
                expected.append(("fast", payload))
            stream += encode_frame(frame)
        seen: list = []
        splitter = FrameSplitter()
        splitter.on_fast = lambda p: seen.append(("fast", p))
        for i in range(0, len(stream), step):
            splitter.feed_to(stream[i : i + step], lambda f: seen.append(("frame", f)))
        assert seen == expected

    def test_lane_change_applies_to_the_next_frame(self) -> None:
        """A frame handled by on_frame may switch the lane for the frames after it, same chunk."""
        point = encode_frame(b"\x8a\x01\x02ab")
        other = encode_frame(b"\x12\x00")
        seen: list = []
        splitter = FrameSplitter()

        def on_frame(frame: bytes) -> None:
            seen.append(("frame", frame))
            if frame == b"\x12\x00":
                splitter.on_fast = lambda p: seen.append(("fast", p))

        splitter.feed_to(point + other + point, on_frame)
        assert seen == [("frame", b"\x8a\x01\x02ab"), ("frame", b"\x12\x00"), ("fast", b"ab")]


def test_two_byte_length_over_a_small_limit() -> None:
    """The inline two-byte length path still enforces the limit."""
    splitter = FrameSplitter(limit=200)
    with pytest.raises(FrameError, match="exceeds"):
        splitter.feed(encode_uvarint(300) + b"x" * 300)
