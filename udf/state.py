"""Pure per-group alert state machine of ``@alertState()`` and its snapshot codec.

No I/O and no protobuf: :mod:`udf.alert_state` reads (group, time, value) from each
point, calls ``groups.get`` and ``evaluator.update``, and writes the ``alert_*``
fields from the mutated :class:`GroupState`.  The state is mutated in place because
the handler runs this for every point at >220k points/s; rebuilding a frozen value
per point would cost more than the whole evaluation.

Semantics (above mode; ``below`` negates values and thresholds, which mirrors it):

Candidate level
    ``value > crit`` -> CRITICAL, else ``> warn`` -> WARNING, else ``> info`` -> INFO,
    else OK (strictly greater; unset thresholds never match).  Hysteresis, as
    Kapacitor's alert node does it: when the candidate is below the current level
    and the current level has a reset value, the level holds unless
    ``value < reset``; then the candidate stands.  A NaN value matches no threshold
    and releases no reset, so it maps to OK unless a reset holds the level (what
    Kapacitor's lambdas would do with NaN).

``for`` / ``recoverFor``
    A candidate worse than the current level waits ``for`` of point time before it
    is entered, a better one ``recoverFor``.  The wait is tracked per level:
    ``since[L]`` is the time of the first point of the current unbroken run of
    points whose candidate is at least as bad as ``L`` (for ``L`` above the current
    level) or at least as good as ``L`` (for ``L`` below it).  On each point the
    level moves to the furthest level whose run has lasted ``>= wait``.  So with
    ``for(1m)``: WARNING candidate at t0, CRITICAL candidate from t0+30s on ->
    WARNING is entered at t0+1m (the value has been above ``warn`` for a minute) and
    CRITICAL at t0+1m30s.  A point whose candidate does not reach ``L`` breaks that
    run; a point back at the current level breaks every run.  ``pending`` is the
    candidate of the point while it differs from the level entered, else -1.
    Recovery mirrors this, so CRITICAL may recover to WARNING before OK.

Annotation
    After :meth:`Evaluator.update`: ``level``; ``changed`` (the level changed on this
    point; a first point at OK is not a change); ``previous`` (level before the last
    change, OK initially); ``start_ns`` (time of the point that entered the level;
    a group's first point starts its OK level); ``count`` (points at this level, this
    one included: 1 on a change); ``pending``; ``flapping``.  Duration in seconds is
    ``(s.last_ns - s.start_ns) / 1e9``, which equals ``(t_ns - start_ns) / 1e9`` for
    in-order points and is never negative.

Out-of-order points
    A group's clock never runs backwards: a point older than the newest point seen
    for its group is evaluated in arrival order but timed at that newest time
    (``last_ns``).  Durations and waits therefore never go negative and a late point
    neither shortens nor lengthens a wait.

Flapping
    Exactly Kapacitor's alert node (``alert.go`` ``addEvent``/``percentChange``, with
    ``weightDiff = 1.5`` and ``maxWeight = 1.2``): a ring of the last ``history``
    levels (all OK initially) gets the level of every point; the weighted
    percentage of changes is computed with weights rising from 0.8 by
    ``(1.2 - 0.8) / (history - 1)`` per pair and divided by ``history - 1``; flapping
    turns true when it is ``> high`` and false again when ``< low``.  Kapacitor walks
    the pairs starting at the newest slot, so the newest change gets the lowest
    weight, the ring's wrap pair (newest vs oldest) is counted and the pair just
    before the newest is not; this module reproduces that bit for bit, quirks
    included, so a dashboard agrees with an alert node using the same settings.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple, Union

from udf.options import MAX_HISTORY, AlertOptions

__all__ = [
    "NO_TIME",
    "SNAPSHOT_MAGIC",
    "SNAPSHOT_VERSION",
    "Evaluator",
    "GroupState",
    "Groups",
    "Snapshot",
    "SnapshotError",
    "decode_snapshot",
    "encode_snapshot",
]

NO_TIME = -(1 << 63)
"""``last_ns`` of a group that has seen no point yet (int64 minimum)."""

_INF = float("inf")

# Kapacitor alert.go: "The newest state change is weighted 'weightDiff' times more than
# oldest state change" and "Maximum weight applied to newest state change".  Go folds
# the untyped constant maxWeight/weightDiff exactly, giving float64(0.8); Python's
# 1.2 / 1.5 would give 0.7999999999999999, hence the literal.
_MAX_WEIGHT = 1.2
_MIN_WEIGHT = 0.8
_PCACHE_MAX = 1 << 16  # distinct change patterns remembered per evaluator


class GroupState:
    """Mutable alert state of one group; after ``update`` it holds that point's annotation."""

    __slots__ = (
        "level",
        "previous",
        "changed",
        "start_ns",
        "count",
        "pending",
        "since",
        "flapping",
        "last_ns",
        "history",
        "hist_idx",
        "hist_mask",
    )

    level: int
    previous: int
    changed: bool
    start_ns: int
    count: int
    pending: int
    since: List[Optional[int]]
    flapping: bool
    last_ns: int
    history: bytearray
    hist_idx: int
    hist_mask: int

    def __init__(self, history_len: int = 0) -> None:
        self.level = 0
        self.previous = 0
        self.changed = False
        self.start_ns = 0
        self.count = 0  # 0 until the group's first point
        self.pending = -1
        self.since = [None, None, None, None]  # per level code, see module docstring
        self.flapping = False
        self.last_ns = NO_TIME
        self.history = bytearray(history_len)  # ring of level codes, empty without flapping
        self.hist_idx = 0  # slot of the newest entry
        self.hist_mask = 0  # bit j: history entries j and j+1 (oldest first) differ

    @property
    def duration_s(self) -> float:
        """Seconds the current level has lasted at the group's newest point time."""
        return (self.last_ns - self.start_ns) / 1e9

    def history_levels(self) -> bytes:
        """The history ring oldest first, as level codes."""
        h = self.history
        o = self.hist_idx + 1
        return bytes(h[o:] + h[:o])

    def _key(self) -> Tuple[object, ...]:
        return (
            self.level,
            self.previous,
            self.changed,
            self.start_ns,
            self.count,
            self.pending,
            tuple(self.since),
            self.flapping,
            self.last_ns,
            self.history_levels(),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GroupState):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (
            f"GroupState(level={self.level}, previous={self.previous}, changed={self.changed}, "
            f"start_ns={self.start_ns}, count={self.count}, pending={self.pending}, "
            f"since={self.since}, flapping={self.flapping}, last_ns={self.last_ns}, "
            f"history={list(self.history_levels())})"
        )


def _chrono_mask(h: Union[bytes, bytearray]) -> int:
    """Bit j set where entries j and j+1 of a chronological level sequence differ."""
    m = 0
    for j in range(len(h) - 1):
        if h[j] != h[j + 1]:
            m |= 1 << j
    return m


class Evaluator:
    """Applies one task's options to group states; holds no per-group data itself."""

    __slots__ = (
        "opts",
        "_neg",
        "_t1",
        "_t2",
        "_t3",
        "_tmin",
        "_resets",
        "_for_ns",
        "_recover_ns",
        "_flap",
        "_low",
        "_high",
        "_hlen",
        "_weights",
        "_top",
        "_lowmask",
        "_pcache",
        "_up",
        "_down",
    )

    def __init__(self, opts: AlertOptions) -> None:
        self.opts = opts
        neg = opts.below
        self._neg = neg

        def conv(x: Optional[float], missing: Optional[float]) -> Optional[float]:
            if x is None:
                return missing
            return -x if neg else x

        # Thresholds in "greater is worse" space; an unset one never matches.
        t1 = conv(opts.info, _INF)
        t2 = conv(opts.warn, _INF)
        t3 = conv(opts.crit, _INF)
        assert t1 is not None and t2 is not None and t3 is not None
        self._t1, self._t2, self._t3 = t1, t2, t3
        self._tmin = min(t1, t2, t3)
        self._resets: Tuple[Optional[float], ...] = (
            None,
            conv(opts.info_reset, None),
            conv(opts.warn_reset, None),
            conv(opts.crit_reset, None),
        )
        self._for_ns = opts.for_ns
        self._recover_ns = opts.recover_for_ns
        configured = [0] + [c for c, t in ((1, opts.info), (2, opts.warn), (3, opts.crit)) if t is not None]
        # Enterable levels above each level (ascending) and below it (descending).
        self._up = tuple(tuple(c for c in configured if c > lvl) for lvl in range(4))
        self._down = tuple(tuple(c for c in reversed(configured) if c < lvl) for lvl in range(4))
        self._flap = opts.flapping is not None
        self._low, self._high = opts.flapping if opts.flapping is not None else (0.0, 1.0)
        n = opts.history
        self._hlen = n if self._flap else 0
        weights = []
        w = _MIN_WEIGHT
        step = (_MAX_WEIGHT - w) / float(n - 1)
        for _ in range(n - 1):  # same accumulation as Go, so the floats are identical
            weights.append(w)
            w += step
        self._weights = tuple(weights)
        self._top = n - 2
        self._lowmask = (1 << (n - 3)) - 1 if n > 2 else 0
        self._pcache: Dict[int, float] = {}

    @property
    def history_len(self) -> int:
        """Length of each group's history ring: ``opts.history`` with flapping, else 0."""
        return self._hlen

    def new_state(self) -> GroupState:
        """A group before its first point: OK, count 0, nothing pending, history all OK."""
        return GroupState(self._hlen)

    def classify(self, value: float, level: int) -> int:
        """Candidate level of ``value`` for a group at ``level`` (thresholds, then reset)."""
        v = -value if self._neg else value
        if v > self._tmin:
            cand = 3 if v > self._t3 else 2 if v > self._t2 else 1
        else:
            cand = 0
        if cand < level:
            r = self._resets[level]
            if r is not None and not v < r:
                return level
        return cand

    def update(self, s: GroupState, value: float, t_ns: int) -> None:
        """Feed one point; ``s`` then holds its annotation (see the module docstring).

        The handler's duration is ``(s.last_ns - s.start_ns) / 1e9``: ``last_ns`` is
        ``t_ns`` unless the point arrived out of order.
        """
        v = -value if self._neg else value
        lvl = s.level
        if v > self._tmin:
            cand = 3 if v > self._t3 else 2 if v > self._t2 else 1
        else:
            cand = 0
        if cand < lvl:
            r = self._resets[lvl]
            if r is not None and not v < r:
                cand = lvl
        if t_ns < s.last_ns:
            t_ns = s.last_ns  # the group's clock never runs backwards
        else:
            s.last_ns = t_ns
        if cand == lvl and s.pending < 0 and s.count:
            # Steady path: same level, nothing waiting.
            s.count += 1
            s.changed = False
            if self._flap and (s.hist_mask or s.flapping or s.history[s.hist_idx] != lvl):
                self._flap_step(s, lvl)
            return
        self._step(s, cand, t_ns)

    def _step(self, s: GroupState, cand: int, t: int) -> None:
        """Slow path: first point, a candidate off the level, or a wait in progress."""
        lvl = s.level
        since = s.since
        if not s.count:
            s.start_ns = t  # the group's first point starts its OK level
        new = lvl
        if cand > lvl:
            wait = self._for_ns
            for L in self._up[lvl]:
                if L <= cand:
                    st = since[L]
                    if st is None:
                        since[L] = st = t
                    if t - st >= wait:
                        new = L  # ascending: the worst qualifying level wins
                else:
                    since[L] = None
            for L in self._down[lvl]:
                since[L] = None  # a worse point breaks every recovery wait
        elif cand < lvl:
            wait = self._recover_ns
            for L in self._down[lvl]:
                if L >= cand:
                    st = since[L]
                    if st is None:
                        since[L] = st = t
                    if t - st >= wait:
                        new = L  # descending: the best qualifying level wins
                else:
                    since[L] = None
            for L in self._up[lvl]:
                since[L] = None
        elif s.pending >= 0:
            since[0] = since[1] = since[2] = since[3] = None
        if new != lvl:
            s.previous = lvl
            s.level = new
            s.changed = True
            s.start_ns = t
            s.count = 1
            # Waits beyond the new level in the direction of travel go on; the rest end.
            if new > lvl:
                for L in range(new + 1):
                    since[L] = None
            else:
                for L in range(new, 4):
                    since[L] = None
        else:
            s.changed = False
            s.count += 1
        s.pending = -1 if cand == new else cand
        if self._flap:
            self._flap_step(s, new)

    def _flap_step(self, s: GroupState, level: int) -> None:
        """Record ``level`` in the history ring and update ``flapping`` like Kapacitor."""
        h = s.history
        i = s.hist_idx
        d = s.hist_mask
        if d or h[i] != level:
            n = self._hlen
            o = i + 1  # the oldest slot becomes the newest
            if o == n:
                o = 0
            d = (d >> 1) | ((h[i] != level) << self._top)
            h[o] = level
            s.hist_idx = o
            s.hist_mask = d
        if d:
            p = self._percent_from_mask(s, d)
        else:
            p = 0.0  # a constant ring: every pair equal
        if s.flapping:
            if p < self._low:
                s.flapping = False
        elif p > self._high:
            s.flapping = True

    def _percent_from_mask(self, s: GroupState, d: int) -> float:
        """Kapacitor's ``percentChange`` from the chronological difference mask ``d``.

        Kapacitor's pair k (weight ``weights[k]``) is: k=0 the newest pair (mask bit
        n-2), k=1 the wrap pair newest/oldest, k>=2 the chronological pair k-2 (mask bit
        k-2); mask bit n-3 is never looked at.  The sum adds the weights of differing
        pairs in ascending k from 0.0, as Go does, so the result is bit-identical.
        """
        n = self._hlen
        if n == 2:
            key = d
        else:
            o = s.hist_idx + 1
            if o == n:
                o = 0
            key = (d >> self._top) | ((s.history[s.hist_idx] != s.history[o]) << 1) | ((d & self._lowmask) << 2)
        cache = self._pcache
        p = cache.get(key)
        if p is None:
            weights = self._weights
            changes = 0.0
            m = key
            while m:
                low = m & -m
                changes += weights[low.bit_length() - 1]
                m ^= low
            p = changes / float(n - 1)
            if len(cache) < _PCACHE_MAX:
                cache[key] = p
        return p

    def _percent_change(self, h: bytearray, idx: int) -> float:
        """Kapacitor's ``percentChange`` walked over ring ``h`` whose newest slot is ``idx``."""
        n = self._hlen
        changes = 0.0
        weights = self._weights
        for k in range(n - 1):
            c = k + idx
            if c >= n:
                c -= n
            if h[c] != h[c - 1]:  # h[-1] is the last slot: Go's wrap-around
                changes += weights[k]
        return changes / float(n - 1)

    def percent_change(self, s: GroupState) -> float:
        """The weighted change percentage of ``s``'s history (0.0 without flapping)."""
        if not self._hlen:
            return 0.0
        return self._percent_change(s.history, s.hist_idx)


class Groups:
    """Group id -> :class:`GroupState`, dropping groups silent for longer than ``expire``.

    Groups are kept in order of their last point's arrival; a sweep pops from the
    oldest end while the oldest group has been silent for more than ``expire`` of
    point time, relative to the newest point.  That costs O(1) amortised per point
    and bounds memory to the groups active within ``expire`` (plus a sweep step).
    A group behind a not-yet-expired one (possible only with out-of-order times)
    is swept later, but :meth:`get` never returns an expired state: a group whose
    previous point is more than ``expire`` older than its new one starts afresh.
    """

    __slots__ = ("_ev", "_states", "_expire_ns", "_sweep_step", "_sweep_at")

    def __init__(self, evaluator: Evaluator) -> None:
        self._ev = evaluator
        self._states: "OrderedDict[str, GroupState]" = OrderedDict()
        self._expire_ns = evaluator.opts.expire_ns
        self._sweep_step = max(self._expire_ns // 8, 1)
        self._sweep_at = NO_TIME

    @property
    def evaluator(self) -> Evaluator:
        """The evaluator whose states these are."""
        return self._ev

    def get(self, group: str, t_ns: int) -> GroupState:
        """The state of ``group`` for a point at ``t_ns``, created (or renewed) as needed."""
        states = self._states
        exp = self._expire_ns
        if not exp:
            s = states.get(group)
            if s is None:
                s = states[group] = self._ev.new_state()
            return s
        if t_ns >= self._sweep_at:
            self.expire(t_ns)
            self._sweep_at = t_ns + self._sweep_step
        s = states.get(group)
        if s is None or t_ns - s.last_ns > exp:
            s = states[group] = self._ev.new_state()
        states.move_to_end(group)
        return s

    def expire(self, now_ns: int) -> int:
        """Drop groups silent for more than ``expire`` before ``now_ns``; return how many."""
        exp = self._expire_ns
        if not exp:
            return 0
        states = self._states
        limit = now_ns - exp
        dropped = 0
        while states:
            group, s = next(iter(states.items()))
            if s.last_ns >= limit:
                break
            del states[group]
            dropped += 1
        return dropped

    def restore(self, snapshot: "Snapshot") -> None:
        """Replace all states with a decoded snapshot's, fitted to this evaluator's history."""
        n = self._ev.history_len
        states: "OrderedDict[str, GroupState]" = OrderedDict()
        for group, s in snapshot.states.items():
            if len(s.history) != n:
                old = s.history_levels()
                chrono = bytes(max(0, n - len(old))) + old[max(0, len(old) - n):]
                s.history = bytearray(chrono)
                s.hist_idx = n - 1 if n else 0
                s.hist_mask = _chrono_mask(chrono)
            states[group] = s
        self._states = states
        self._sweep_at = NO_TIME

    def clear(self) -> None:
        """Forget every group."""
        self._states.clear()

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, group: object) -> bool:
        return group in self._states

    def __iter__(self) -> Iterator[str]:
        return iter(self._states)

    def items(self) -> Iterator[Tuple[str, GroupState]]:
        """(group, state) pairs, least recently fed first."""
        return iter(self._states.items())


# ---------------------------------------------------------------------------
# Snapshot codec
#
#   header  "KOAS" | version u8 (=1) | history_len u16 | group_count u32
#   group   uvarint len | group id utf-8
#           level u8 | previous u8 | flags u8 | pending i8 | start_ns i64 | count u64 | last_ns i64
#           since i64 for each level whose flags bit (4 + level) is set, ascending
#           history_len level codes, oldest first
#   flags   bit0 changed, bit1 flapping, bits 4..7 since[0..3] present; others zero
# All integers little-endian.  Anything else (bad magic, unknown version, short or
# trailing bytes, out-of-range codes, bad UTF-8, duplicate groups) is a SnapshotError.

SNAPSHOT_MAGIC = b"KOAS"
SNAPSHOT_VERSION = 1

_HEADER = struct.Struct("<4sBHI")
_FIXED = struct.Struct("<BBBbqQq")
_I64 = struct.Struct("<q")
_U64_MAX = (1 << 64) - 1


class SnapshotError(ValueError):
    """Snapshot bytes cannot be restored; the message says why."""


@dataclass
class Snapshot:
    """Decoded snapshot: history length written and the states in arrival order."""

    history: int = 0
    states: Dict[str, GroupState] = field(default_factory=dict)


def _uvarint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode_snapshot(groups: Groups) -> bytes:
    """All groups' state as versioned bytes for Kapacitor's SnapshotResponse."""
    hlen = groups.evaluator.history_len
    parts = [_HEADER.pack(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, hlen, len(groups))]
    append = parts.append
    fixed = _FIXED.pack
    i64 = _I64.pack
    for group, s in groups.items():
        gid = group.encode("utf-8")
        n = len(gid)
        append(bytes((n,)) if n < 0x80 else _uvarint(n))
        append(gid)
        since = s.since
        flags = (1 if s.changed else 0) | (2 if s.flapping else 0)
        if s.pending >= 0:
            for lvl in range(4):
                if since[lvl] is not None:
                    flags |= 16 << lvl
        append(fixed(s.level, s.previous, flags, s.pending, s.start_ns, min(s.count, _U64_MAX), s.last_ns))
        if flags >> 4:
            for lvl in range(4):
                st = since[lvl]
                if st is not None:
                    append(i64(st))
        if hlen:
            h = s.history
            o = s.hist_idx + 1
            if o == hlen:
                append(bytes(h))
            else:
                append(bytes(h[o:]))
                append(bytes(h[:o]))
    return b"".join(parts)


def decode_snapshot(data: bytes) -> Snapshot:
    """Parse :func:`encode_snapshot` bytes; ``b""`` (Kapacitor's "no state") is empty."""
    if not data:
        return Snapshot()
    mv = memoryview(bytes(data))
    try:
        return _decode(mv)
    except SnapshotError:
        raise
    except (struct.error, IndexError, UnicodeDecodeError, ValueError) as e:
        raise SnapshotError(f"corrupt alert-state snapshot: {e}") from e


def _decode(mv: memoryview) -> Snapshot:
    if len(mv) < _HEADER.size:
        raise SnapshotError(f"alert-state snapshot too short ({len(mv)} bytes)")
    magic, version, hlen, count = _HEADER.unpack_from(mv, 0)
    if magic != SNAPSHOT_MAGIC:
        raise SnapshotError(f"not an alert-state snapshot (magic {bytes(magic)!r})")
    if version != SNAPSHOT_VERSION:
        raise SnapshotError(f"unsupported alert-state snapshot version {version} (this build reads {SNAPSHOT_VERSION})")
    if hlen == 1 or hlen > MAX_HISTORY:
        raise SnapshotError(f"corrupt alert-state snapshot: history length {hlen}")
    pos = _HEADER.size
    end = len(mv)
    states: Dict[str, GroupState] = {}
    fixed = _FIXED.unpack_from
    i64 = _I64.unpack_from
    for _ in range(count):
        n = 0
        shift = 0
        while True:
            b = mv[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
            if shift > 28:
                raise SnapshotError("corrupt alert-state snapshot: group id length overflows")
        if pos + n > end:
            raise SnapshotError("alert-state snapshot truncated in a group id")
        group = bytes(mv[pos : pos + n]).decode("utf-8")
        pos += n
        level, previous, flags, pending, start_ns, count_, last_ns = fixed(mv, pos)
        pos += _FIXED.size
        if level > 3 or previous > 3 or not -1 <= pending <= 3 or flags & 0x0C:
            raise SnapshotError(f"corrupt alert-state snapshot: bad codes for group {group!r}")
        s = GroupState(0)
        s.level = level
        s.previous = previous
        s.changed = bool(flags & 1)
        s.flapping = bool(flags & 2)
        s.pending = pending
        s.start_ns = start_ns
        s.count = count_
        s.last_ns = last_ns
        for lvl in range(4):
            if flags & (16 << lvl):
                (s.since[lvl],) = i64(mv, pos)
                pos += 8
        if (pending < 0) != (not flags >> 4):
            raise SnapshotError(f"corrupt alert-state snapshot: pending wait without times for group {group!r}")
        if hlen:
            if pos + hlen > end:
                raise SnapshotError("alert-state snapshot truncated in a history")
            hist = bytearray(mv[pos : pos + hlen])
            pos += hlen
            if max(hist) > 3:
                raise SnapshotError(f"corrupt alert-state snapshot: bad history for group {group!r}")
            s.history = hist
            s.hist_idx = hlen - 1
            s.hist_mask = _chrono_mask(hist)
        if group in states:
            raise SnapshotError(f"corrupt alert-state snapshot: group {group!r} twice")
        states[group] = s
    if pos != end:
        raise SnapshotError(f"corrupt alert-state snapshot: {end - pos} trailing bytes")
    return Snapshot(history=hlen, states=states)
