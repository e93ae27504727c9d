"""The alert-state UDF as Kapacitor sees it: a subprocess speaking the UDF protocol."""

from __future__ import annotations

import sys
from typing import Dict, List, Optional

import pytest

from udf import udf_pb2 as pb
from udf.alert_state import annotation_fields
from udf.client import Duration, UdfClient, option
from udf.options import INFO_OPTIONS

UDF = [sys.executable, "-m", "udf.alert_state"]
SEC = 10**9


def cpu_point(t: int, value: Optional[float], host: str = "a", as_int: bool = False) -> pb.Point:
    p = pb.Point(time=t * SEC, name="cpu", database="telegraf", retentionPolicy="autogen")
    p.group = f"host={host}"
    p.dimensions.append("host")
    p.tags["host"] = host
    p.tags["cpu"] = "cpu-total"
    p.fieldsDouble["usage_system"] = 1.25
    p.fieldsString["note"] = "keep me"
    if value is not None:
        if as_int:
            p.fieldsInt["usage_user"] = int(value)
        else:
            p.fieldsDouble["usage_user"] = value
    return p


def annotations(p: pb.Point, prefix: str = "alert_") -> Dict[str, object]:
    out: Dict[str, object] = {}
    for name, kind in annotation_fields(prefix).items():
        source = {"string": p.fieldsString, "int": p.fieldsInt, "double": p.fieldsDouble, "bool": p.fieldsBool}[kind]
        if name in source:
            out[name[len(prefix):]] = source[name]
    return out


def run(client: UdfClient, points: List[pb.Point]) -> List[pb.Point]:
    for p in points:
        client.send(pb.Request(point=p))
    return client.recv_points(len(points))


STANDARD = [option("field", "usage_user"), option("warn", 70.0), option("crit", 90.0)]


class TestInfo:
    def test_declares_every_option_with_kapacitor_types(self) -> None:
        """Info lists each documented option with its value types, STREAM by default."""
        with UdfClient(UDF) as c:
            info = c.info()
            assert (info.wants, info.provides) == (pb.STREAM, pb.STREAM)
            names = {k: [pb.ValueType.Name(t) for t in v.valueTypes] for k, v in info.options.items()}
            assert names == {k: list(v) for k, v in INFO_OPTIONS.items()}
            assert names["flapping"] == ["DOUBLE", "DOUBLE"] and names["below"] == []

    def test_batch_flag(self) -> None:
        """--batch makes the UDF want and provide BATCH."""
        with UdfClient(UDF + ["--batch"]) as c:
            info = c.info()
            assert (info.wants, info.provides) == (pb.BATCH, pb.BATCH)


class TestInit:
    @pytest.mark.parametrize(
        "options, word",
        [
            ([option("warn", 1.0)], "field"),
            ([option("field", "x")], "threshold"),
            ([option("field", "x"), option("warn", 95.0), option("crit", 90.0)], "warn"),
            ([option("field", "x"), option("crit", 90.0), option("critReset", 95.0)], "critReset"),
            ([option("field", "x"), option("crit", 9.0), option("flapping", 0.5, 0.2)], "flapping"),
            ([option("field", "x"), option("crit", 9.0), option("for", Duration(-1))], "for"),
            ([option("field", "x"), option("crit", 9.0), option("nope", 1.0)], "nope"),
        ],
    )
    def test_bad_options_fail_naming_the_option(self, options: list, word: str) -> None:
        """A wrong option gives success=false with a message naming it."""
        with UdfClient(UDF) as c:
            resp = c.init(options)
            assert not resp.success
            assert word in resp.error


class TestAnnotation:
    def test_levels_and_fields(self) -> None:
        """Every point gets the documented fields; everything else is untouched."""
        with UdfClient(UDF) as c:
            assert c.init(STANDARD).success
            sent = [cpu_point(0, 10.0), cpu_point(10, 75.0), cpu_point(20, 95.0), cpu_point(30, 96.0), cpu_point(40, 5.0)]
            got = run(c, sent)
            levels = [annotations(p)["level"] for p in got]
            assert levels == ["OK", "WARNING", "CRITICAL", "CRITICAL", "OK"]
            assert [annotations(p)["changed"] for p in got] == [False, True, True, False, True]
            assert [annotations(p)["previous_level"] for p in got] == ["OK", "OK", "WARNING", "WARNING", "CRITICAL"]
            assert [annotations(p)["level_code"] for p in got] == [0, 2, 3, 3, 0]
            assert [annotations(p)["count"] for p in got] == [1, 1, 1, 2, 1]
            assert [annotations(p)["duration"] for p in got] == [0.0, 0.0, 0.0, 10.0, 0.0]
            assert all(annotations(p)["pending"] == "" for p in got)
            assert all(annotations(p)["flapping"] is False for p in got)
            for before, after in zip(sent, got):
                assert after.time == before.time and after.name == before.name
                assert after.group == before.group and list(after.dimensions) == ["host"]
                assert dict(after.tags) == dict(before.tags)
                assert after.database == "telegraf" and after.retentionPolicy == "autogen"
                assert after.fieldsDouble["usage_user"] == before.fieldsDouble["usage_user"]
                assert after.fieldsDouble["usage_system"] == 1.25
                assert after.fieldsString["note"] == "keep me"

    def test_int_field_is_evaluated(self) -> None:
        """An integer field is compared like a double."""
        with UdfClient(UDF) as c:
            c.init(STANDARD)
            (p,) = run(c, [cpu_point(0, 95, as_int=True)])
            assert annotations(p)["level"] == "CRITICAL"

    def test_groups_are_independent(self) -> None:
        """One group's level never affects another's."""
        with UdfClient(UDF) as c:
            c.init(STANDARD)
            got = run(c, [cpu_point(0, 95.0, "a"), cpu_point(0, 10.0, "b"), cpu_point(5, 10.0, "a"), cpu_point(5, 95.0, "b")])
            assert [annotations(p)["level"] for p in got] == ["CRITICAL", "OK", "OK", "CRITICAL"]

    def test_missing_field_passes_through_unannotated(self) -> None:
        """A point without the field comes back exactly as sent."""
        with UdfClient(UDF) as c:
            c.init(STANDARD)
            sent = cpu_point(0, None)
            (got,) = run(c, [sent])
            assert got == sent

    def test_prefix_and_below(self) -> None:
        """prefix renames the fields; below makes low values worse."""
        with UdfClient(UDF) as c:
            c.init([option("field", "usage_user"), option("crit", 10.0), option("below"), option("prefix", "st_")])
            got = run(c, [cpu_point(0, 50.0), cpu_point(1, 5.0)])
            assert [annotations(p, "st_")["level"] for p in got] == ["OK", "CRITICAL"]
            assert "alert_level" not in got[1].fieldsString

    def test_for_holds_pending(self) -> None:
        """With for(1m) a worse level waits, shown in pending, then is entered."""
        with UdfClient(UDF) as c:
            c.init(STANDARD + [option("for", Duration.seconds(60))])
            got = run(c, [cpu_point(0, 10.0), cpu_point(10, 95.0), cpu_point(40, 95.0), cpu_point(70, 95.0)])
            assert [annotations(p)["level"] for p in got] == ["OK", "OK", "OK", "CRITICAL"]
            assert [annotations(p)["pending"] for p in got] == ["", "CRITICAL", "CRITICAL", ""]

    def test_hysteresis(self) -> None:
        """critReset keeps CRITICAL until the value drops below the reset value."""
        with UdfClient(UDF) as c:
            c.init(STANDARD + [option("critReset", 80.0)])
            got = run(c, [cpu_point(0, 95.0), cpu_point(1, 85.0), cpu_point(2, 79.0)])
            assert [annotations(p)["level"] for p in got] == ["CRITICAL", "CRITICAL", "WARNING"]


class TestSnapshots:
    def test_restore_continues_where_it_left_off(self) -> None:
        """A new process restored from a snapshot keeps level, start time and count."""
        with UdfClient(UDF) as c:
            c.init(STANDARD)
            run(c, [cpu_point(0, 95.0), cpu_point(10, 95.0)])
            snap = c.snapshot()
        assert snap
        with UdfClient(UDF) as c:
            c.init(STANDARD)
            assert c.restore(snap).success
            (p,) = run(c, [cpu_point(30, 96.0)])
            a = annotations(p)
            assert (a["level"], a["count"], a["duration"], a["changed"]) == ("CRITICAL", 3, 30.0, False)

    def test_garbage_restore_fails_and_keeps_serving(self) -> None:
        """Bad snapshot bytes answer success=false with a message; points still flow."""
        with UdfClient(UDF) as c:
            c.init(STANDARD)
            resp = c.restore(b"\x00garbage")
            assert not resp.success and resp.error
            (p,) = run(c, [cpu_point(0, 95.0)])
            assert annotations(p)["level"] == "CRITICAL"

    def test_empty_restore_is_success(self) -> None:
        """Kapacitor may send an empty snapshot; that is not an error."""
        with UdfClient(UDF) as c:
            c.init(STANDARD)
            assert c.restore(b"").success


class TestBatch:
    def test_batch_framing_and_points_annotated(self) -> None:
        """Begin/end pass through and every point inside is annotated."""
        with UdfClient(UDF + ["--batch"]) as c:
            c.init(STANDARD)
            c.send(pb.Request(begin=pb.BeginBatch(name="cpu", group="host=a", size=2)))
            for t, v in ((0, 50.0), (1, 95.0)):
                p = cpu_point(t, v)
                p.name = ""
                c.send(pb.Request(point=p))
            c.send(pb.Request(end=pb.EndBatch(name="cpu", group="host=a", tmax=SEC)))
            out = [c.recv() for _ in range(4)]
            assert [r.WhichOneof("message") for r in out] == ["begin", "point", "point", "end"]
            assert annotations(out[2].point)["level"] == "CRITICAL"
            assert out[3].end.tmax == SEC


class TestChangesOnly:
    def test_only_changes_are_emitted(self) -> None:
        """changesOnly: the points whose level changed, annotated as usual; nothing else."""
        with UdfClient(UDF) as c:
            assert c.init(STANDARD + [option("changesOnly")]).success
            sent = [cpu_point(0, 10.0), cpu_point(10, 75.0), cpu_point(20, 76.0), cpu_point(30, None),
                    cpu_point(40, 95.0), cpu_point(50, 5.0), cpu_point(60, 6.0)]
            for p in sent:
                c.send(pb.Request(point=p))
            got = c.recv_points(3)
            assert c.keepalive(7) == 7  # the next answer: no other point was emitted
            assert [p.time // SEC for p in got] == [10, 40, 50]
            assert [annotations(p)["level"] for p in got] == ["WARNING", "CRITICAL", "OK"]
            assert all(annotations(p)["changed"] is True for p in got)
            assert got[0].fieldsDouble["usage_system"] == 1.25 and got[0].fieldsString["note"] == "keep me"

    def test_state_and_snapshot_are_the_same_as_without(self) -> None:
        """The option changes what is emitted, never the state: snapshots are byte-identical."""
        pts = [cpu_point(t * 10, v, host) for t, v in enumerate([10.0, 95.0, 96.0, 50.0]) for host in "ab"]
        snaps = []
        for extra in ([], [option("changesOnly")]):
            with UdfClient(UDF) as c:
                assert c.init(STANDARD + extra).success
                for p in pts:
                    c.send(pb.Request(point=p))
                c.send(pb.Request(keepalive=pb.KeepaliveRequest(time=1)))
                while (r := c.recv()) is not None and r.WhichOneof("message") == "point":
                    pass
                assert r is not None and r.WhichOneof("message") == "keepalive"
                snaps.append(c.snapshot())
        assert snaps[0] == snaps[1] and snaps[0]
