"""Render ``bench/results.json`` into ``bench/results.md`` and ``bench/results.png``.

The report only formats what the sections measured; re-render without measuring:

    .venv/bin/python -m bench.report [--json bench/results.json] [--out bench]
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .common import BENCH_DIR, Figure, load_results

__all__ = ["FINDINGS", "render", "write_markdown", "write_plot"]

#: Profile findings handed to the lead (bench/ never edits udf/ or bridge/).
#: ``gain`` is written from the A/B tables of the same results (never a number typed in
#: here); ``status`` says whether the change is in the code.
FINDINGS: List[Dict[str, Any]] = [
    {
        "where": "bridge/transport.py `Transport` (requests session)",
        "evidence": (
            "requests' `merge_environment_settings` (`get_environ_proxies`, `proxy_bypass_environment`: "
            "scans of `os.environ`) and `get_netrc_auth` ran on every delivery because `Session.trust_env` "
            "was True; they showed high in the bridge drain profile."
        ),
        "change": (
            "`session.trust_env = False`; proxies from the environment resolved once per origin "
            "(`get_environ_proxies`) and passed explicitly; the CA bundle variable read once."
        ),
        "gain": lambda notes: _transport_gain(notes, "requests session, trust_env=True"),
        "status": "applied, then superseded by the next row",
    },
    {
        "where": "bridge/transport.py `Transport.send` → requests (the delivery hot path)",
        "evidence": (
            "In the drain profile `Transport.send` dominated the bridge's CPU, much of it in requests' "
            "own layers above urllib3's `urlopen` (`prepare_request`, `merge_setting`, hooks, cookie jars, "
            "`build_response`). The delivery threads share one GIL, so CPU per delivery caps the drain "
            "rate whatever the worker count."
        ),
        "change": (
            "Send with urllib3 directly (`PoolManager.request(method, url, body=, headers=, timeout=, "
            "redirect=False, preload_content=False)` + bounded read + `release_conn()`), keeping the "
            "Transport seam, its error mapping and TLS settings; requests stays for the rest."
        ),
        "gain": lambda notes: _transport_gain(notes, "urllib3 PoolManager.request"),
        "status": "applied (Transport sends through a urllib3 PoolManager per target)",
    },
    {
        "where": "udf/agent.py `Agent.run` / `_dispatch` + udf/framing.py `FrameSplitter.feed`",
        "evidence": (
            "Per point the agent made several Python calls before the handler's closure ran (splitter "
            "loop, `decode_uvarint` for every frame of 128 bytes or more, `_dispatch`, the `point_raw` "
            "trampoline); they showed high in the alert-state profile's own time."
        ),
        "change": (
            "Walk each chunk inline (1- and 2-byte length prefixes decoded in place, `FrameSplitter` kept "
            "for frames that cross chunks or exceed 16 KiB) and send point frames straight to the "
            "handler's closure; everything else to `_dispatch`."
        ),
        "gain": lambda notes: _udf_gain(notes),
        "status": "applied (FrameSplitter.feed_to fast lane: point frames go straight to the handler's point_path closure)",
    },
]

NOT_MEASURED = "not measured in these results (run the `profile` section)"


def _transport_gain(notes: Dict[str, Any], other_prefix: str) -> str:
    """``Transport.send`` against another client, from the transport A/B of these results."""
    rows = {str(r["variant"]): float(r["us"]) for r in notes.get("transport_ab") or []}
    ours = next((v for k, v in rows.items() if k.startswith("bridge Transport.send")), None)
    other = next(((k, v) for k, v in rows.items() if k.startswith(other_prefix)), None)
    if ours is None or other is None:
        return NOT_MEASURED
    name, value = other
    return (
        f"`Transport.send`: {ours:.0f} µs CPU per request; {name}: {value:.0f} µs "
        f"(difference {value - ours:+.0f} µs; transport table below)"
    )


def _udf_gain(notes: Dict[str, Any]) -> str:
    """Each stand-in variant against the current code, from the UDF A/B of these results."""
    rows = notes.get("udf_ab") or []
    if not rows:
        return NOT_MEASURED
    base = float(rows[0]["us"])
    parts = [f"{r['variant']}: {float(r['us']) / base - 1:+.1%}" for r in rows[1:]]
    return f"against the current code ({base:.2f} µs/point): " + "; ".join(parts) + " (A/B table below)"


def _fmt(v: Optional[float], unit: str) -> str:
    if v is None:
        return "—"
    if unit in ("points/s", "alerts/s", "requests/s"):
        return f"{v:,.0f}"
    if unit == "MiB":
        return f"{v:,.1f}"
    if unit == "×":
        return f"{v:.2f}×"
    return f"{v:,.2f}"


def _met(f: Figure) -> str:
    m = f.met
    return "" if m is None else ("**met**" if m else "**NOT met**")


def _extra(f: Figure, name: str, fmt: str = "{:.2f}") -> str:
    v = f.extra_median(name)
    return "—" if v is None else fmt.format(v)


def _section_table(figs: List[Figure], cols: List[Tuple[str, str, str]]) -> List[str]:
    head = ["figure", "median", "min", "max", "unit"] + [c[0] for c in cols] + ["target", ""]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for f in figs:
        row = [f.label, _fmt(f.median, f.unit), _fmt(f.minimum, f.unit), _fmt(f.maximum, f.unit), f.unit]
        row += [_extra(f, name, fmt) for _title, name, fmt in cols]
        row += [f.target or "—", _met(f)]
        out.append("| " + " | ".join(row) + " |")
    return out


def _commands(figs: List[Figure]) -> List[str]:
    seen: Dict[str, List[str]] = {}
    for f in figs:
        seen.setdefault(f.command, []).append(f.key)
    out = ["", "Commands (each reproduces the figures listed; `--runs` gives the number of runs):", ""]
    for cmd, keys in seen.items():
        out.append(f"- `{cmd}` → {', '.join(keys)}")
    return out


SECTION_ORDER = ["udf", "mem", "e2e", "bridge", "replicas"]


def write_markdown(data: Dict[str, Any], path: Path, png_name: str = "results.png") -> None:
    facts: Dict[str, Any] = data["facts"]
    figs: List[Figure] = data["figures"]
    notes: Dict[str, Any] = data.get("notes", {})
    by_prefix: Dict[str, List[Figure]] = {}
    for f in figs:
        by_prefix.setdefault(f.key.split(".", 1)[0], []).append(f)
    provenance: Dict[str, Dict[str, Any]] = notes.get("provenance") or {}
    L: List[str] = []
    L += ["# Benchmark results", "", _header(facts, provenance, by_prefix), "", f"![results]({png_name})", ""]
    L += [
        "## Machine",
        "",
        f"- CPU: {facts.get('cpu_model')} — **{facts.get('cores')} cores**, {facts.get('memory_gib', '?')} GiB RAM, {facts.get('os')}",
        f"- Python {facts.get('python')} ({facts.get('python_impl')}); protobuf {facts.get('protobuf')}, backend **{facts.get('protobuf_backend')}**",
    ]
    other = _other_cores(figs)
    if other is not None:
        L.append(
            f"- Other processes used {other[0]:.2f}–{other[1]:.2f} cores while the figures were measured "
            "(per-row medians, `other cores`). Every row shows what the measured process itself used "
            "(`cores`, `µs/point`) next to it; CPU per point is the figure least disturbed by that load."
        )
    udf_notes = notes.get("udf", {})
    if udf_notes:
        b_ours = udf_notes.get("backend_ours") or {}
        b_off = udf_notes.get("backend_official") or {}
        L.append(f"- protobuf as seen inside our UDF processes: {b_ours.get('version')} / **{b_ours.get('backend')}**")
        if b_off:
            L.append(f"- protobuf as seen inside InfluxData's agent processes: {b_off.get('version')} / **{b_off.get('backend')}**")
    L.append("")

    # -- targets summary
    targeted = [f for f in figs if f.target]
    if targeted:
        L += [
            "## Targets",
            "",
            "`met?` judges the median as measured. For the UDF figures the last column gives the same "
            "figure normalised by the UDF's own CPU time (points per UDF-CPU-second; CPU-time ratio): what "
            "one idle core would do, which the neighbours' load disturbs far less.",
            "",
            "| target | figure | median | met? | CPU-normalised |",
            "|---|---|---|---|---|",
        ]
        for f in targeted:
            unit = "" if f.unit == "×" else f" {f.unit}"
            norm = f.extra_median("points_per_cpu_s")
            cpu_ratio = f.extra_median("cpu_ratio")
            normalised = (
                f"{norm:,.0f} points/CPU-s" if norm else f"{cpu_ratio:.2f}× CPU time" if cpu_ratio else "—"
            )
            L.append(f"| {f.target} | {f.label} | {_fmt(f.median, f.unit)}{unit} | {_met(f)} | {normalised} |")
        L.append("")

    # -- UDF throughput
    if "udf" in by_prefix:
        L += ["## UDF throughput", "", _origin(provenance, "udf"), ""]
        anchor = udf_notes.get("anchor")
        if anchor:
            L += [
                "**Anchor.** InfluxData's Python agent and examples from a local checkout of "
                f"github.com/influxdata/kapacitor (`--official-agent {anchor['checkout']}`, commit "
                f"`{anchor['commit'][:12]}`, `{anchor.get('describe')}`), obtained with the search tool's "
                "`fetch github:influxdata/kapacitor` and `git worktree add` outside this repository; nothing "
                f"of it is committed here. Their `udf_pb2.py` (gencode {anchor['their_udf_pb2_gencode']}) is "
                f"regenerated from their `udf.proto` into a temp dir with {anchor['protoc']} (gencode "
                f"{anchor['regenerated_gencode']}, the generator of our `scripts/gen-proto`), so both sides "
                "import the same runtime and backend (see Machine). `"
                f"{anchor['moving_avg']}` (options `field 'usage_user'`, `size 10`, `as 'avg'`) runs over "
                f"stdio and `{anchor['mirror']}` (a unix-socket server in their repo) over a socket, both "
                "with `python -u` as Kapacitor's docs run them, on this interpreter.",
                "",
            ]
        else:
            L += [f"**Comparison with InfluxData's agent: {udf_notes.get('comparison', 'not made')}.**", ""]
        L += [
            "**Driver.** `bench/driver.py` speaks the UDF protocol like kapacitord: Info, Init, then "
            "telegraf-like `cpu` points (name, db, rp, group `host=…`, dimensions, 2 tags, 3-9 double "
            "fields, one point per host every 10 s) written in ~1 MiB chunks from a writer thread with a "
            "keepalive every 10k points, while the reader only counts response frames (length walk + "
            "tag byte); three sample points per run are parsed and must carry the annotation "
            "(`alert_level`, `avg`). Alert-state options are `tick/cpu_alert_state.tick`'s "
            "(`warn 70.0, crit 90.0, critReset 80.0, for 1m`). `µs/point` = UDF CPU time / points: its "
            "one-core ceiling is 1e6 / µs.",
            "",
        ]
        drv = notes.get("udf_driver_ceiling")
        fastest = max((f.median or 0.0 for f in by_prefix["udf"] if f.unit == "points/s"), default=0.0)
        if drv and fastest:
            L += [f"Driver ceiling (`cat` as the \"UDF\", echoing every frame): **{drv:,.0f} frames/s**, "
                  f"{drv / fastest:.1f}× the fastest UDF figure below ({fastest:,.0f} points/s).", ""]
        L += _section_table(
            by_prefix["udf"],
            [
                ("UDF cores", "udf_cpu", "{:.2f}"),
                ("UDF µs/point", "udf_us_per_point", "{:.2f}"),
                ("points / UDF-CPU-s", "points_per_cpu_s", "{:,.0f}"),
                ("CPU-time ratio", "cpu_ratio", "{:.2f}×"),
                ("driver cores", "driver_cpu", "{:.2f}"),
                ("other cores", "other_cpu", "{:.2f}"),
            ],
        )
        L += _commands(by_prefix["udf"])
        L.append("")

    if "mem" in by_prefix:
        mem_notes = notes.get("mem", {})
        L += [
            "## UDF memory",
            "",
            _origin(provenance, "mem"),
            "",
            f"Workload: {mem_notes.get('memory_workload', '')}; alert-state with the options above, "
            f"`expire` = {mem_notes.get('expire_s', 300) // 60}m where set. RSS of the UDF process (psutil) once "
            "every point has come back; `init RSS` is before the first point; the snapshot is what "
            "kapacitord would store (and waits for) every snapshot-interval.",
            "",
        ]
        L += _section_table(
            by_prefix["mem"],
            [
                ("init RSS MiB", "rss_after_init_mib", "{:.1f}"),
                ("snapshot MiB", "snapshot_mib", "{:.2f}"),
                ("snapshot s", "snapshot_s", "{:.2f}"),
                ("UDF cores", "udf_cpu", "{:.2f}"),
            ],
        )
        L += _commands(by_prefix["mem"])
        L.append("")

    if "e2e" in by_prefix:
        e2e = notes.get("e2e", {})
        L += [
            "## Through a real kapacitord",
            "",
            _origin(provenance, "e2e"),
            "",
            e2e.get("description") or (
                f"kapacitord {e2e.get('kapacitord_version', '1.5.9')} (built by `scripts/kapacitor-build`) runs "
                "`kapacitor.conf.example` rendered by `tests/e2e/kapacitord.py`; line protocol is POSTed to "
                "`/kapacitor/v1/write` in 5,000-line bodies; the annotated points are counted at the "
                "`httpOut` node (`collected` in the task's node stats). Task: "
                "`stream|from().measurement('cpu').groupBy('host')@alertState().field('usage_user')"
                ".warn(70.0).crit(90.0).critReset(80.0).for(1m)|httpOut('annotated')`; the control task "
                "drops the UDF node."
            ),
            "",
        ]
        L += _section_table(
            by_prefix["e2e"],
            [
                ("kapacitord cores", "kapacitord_cpu", "{:.2f}"),
                ("kapacitord µs/point", "kapacitord_us_per_point", "{:.1f}"),
                ("UDF cores", "udf_cpu", "{:.2f}"),
                ("UDF µs/point", "udf_us_per_point", "{:.1f}"),
                ("other cores", "other_cpu", "{:.2f}"),
                ("CPU-time ratio", "cpu_ratio", "{:.2f}×"),
            ],
        )
        bottleneck = e2e.get("bottleneck", "")
        if isinstance(bottleneck, dict):
            for version, text in bottleneck.items():
                L += ["", f"**Bottleneck, kapacitord {version}.** {text}"]
        else:
            L += ["", f"**Bottleneck.** {bottleneck}"]
        if e2e.get("hop"):
            L += ["", f"**Where kapacitord's cost of the hop goes.** {e2e['hop']}"]
        if e2e.get("alertState_avg_exec_time_ns"):
            L.append(f" kapacitord's own stat for the UDF node: avg_exec_time {e2e['alertState_avg_exec_time_ns'] / 1000:.0f} µs.")
        L += _commands(by_prefix["e2e"])
        L.append("")

    if "bridge" in by_prefix:
        br = notes.get("bridge", {})
        L += [
            "## Bridge",
            "",
            _origin(provenance, "bridge"),
            "",
            f"`kapacitor-oncall-bridge serve` (aiohttp, SQLite WAL with `synchronous=FULL`, group commit) on "
            f"loopback; {br.get('clients', 50)} concurrent keep-alive clients (asyncio, in the bench "
            f"process) post {br.get('alerts_per_run', 0):,} Kapacitor alert events per run after "
            f"{br.get('warmup_per_run', 0)} warm-up posts, with the target throttled so the accept path is "
            "measured alone and the alerts stay queued; then the bridge restarts with `rate_limit = \"off\"` "
            "and drains the queue to a fast receiver in its own process (rate over the first "
            f"{br.get('drain_sample', 0):,} arrivals). Levels alternate CRITICAL/OK per id and "
            "`repeat_interval = \"0s\"`, so every alert is delivered. 100k ids: the store first holds 100k "
            "ids parked on a second, throttled target (an outage backlog), and each run posts over that "
            "id space. Latency is from the request's first byte to the 202's last.",
            "",
        ]
        L += _section_table(
            by_prefix["bridge"],
            [
                ("bridge cores", "bridge_cpu", "{:.2f}"),
                ("bridge µs/alert", "bridge_us_per_alert", "{:.0f}"),
                ("generator cores", "generator_cpu", "{:.2f}"),
                ("other cores", "other_cpu", "{:.2f}"),
                ("max ms", "max_ms", "{:.1f}"),
            ],
        )
        if br.get("before"):
            L += ["", f"**Drain before the delivery-engine change (issue 15.3), for comparison.** {br['before']}."]
        for f in by_prefix["bridge"]:
            if f.notes and f.key.startswith("bridge.drain.ids1") and f.key.endswith("ids1"):
                L += ["", f"*1 id:* {f.notes}."]
        L += _commands(by_prefix["bridge"])
        L.append("")

    if "replicas" in by_prefix:
        rp = notes.get("replicas", {})
        L += [
            "## Replicas on PostgreSQL",
            "",
            _origin(provenance, "replicas"),
            "",
            f"`serve` processes on one private PostgreSQL 15 (fsync on, same machine) beside the SQLite "
            f"store as anchor, measured in the same run. Accept: {rp.get('clients', 50)} keep-alive clients "
            f"spread over the replicas post {rp.get('alerts_per_run', 0):,} events (1,000 ids), target "
            "throttled so only the accept path runs; p99 from first byte to the 202. Drain: the same "
            "stores restarted with `rate_limit = \"off\"`, deliveries/s to the fast receiver from the first "
            f"arrival to the last. Failover gap: two replicas, `lease = {rp.get('lease', 3)}s`; the receiver "
            "never answers the first request, the replica holding the key is `kill -9`'ed, and the gap runs "
            "until the other replica's delivery arrives. CPU per alert: process CPU time (user + system, "
            "from /proc) of the bridges, of postgres with all its backends, and of the load generator "
            "during the accept phase, divided by the alerts accepted: steadier than rates on a shared "
            f"machine (1-minute load after each setup: {rp.get('load', [])}). The ceiling is the number of "
            "cores divided by the sum of those three: what the same work would reach with the machine to "
            "itself, an upper bound (no scheduling or lock waits).",
            "",
        ]
        L += _section_table(by_prefix["replicas"], [])
        L += _commands(by_prefix["replicas"])
        L.append("")
    if "coalesce" in by_prefix:
        from .coalesce_drain import markdown as coalesce_markdown

        L += coalesce_markdown(by_prefix["coalesce"], notes.get("coalesce", {}), _origin(provenance, "coalesce"))

    profiles = notes.get("profiles") or []
    L += ["## Profiles and proposed fixes", "", _origin(provenance, "profile"), ""]
    for prof in profiles:
        L += ["```", prof.get("text", ""), "```", ""]
    ab = notes.get("udf_ab") or []
    L += [
        "bench/ does not edit `udf/` or `bridge/`: findings go to the lead, who applies them; "
        "this table says what was found and whether it was applied.",
        "",
        "| where | evidence | change | measured in these results | status |",
        "|---|---|---|---|---|",
    ]
    for fd in FINDINGS:
        gain = fd["gain"](notes)
        L.append(f"| {fd['where']} | {fd['evidence']} | {fd['change']} | {gain} | {fd['status']} |")
    if ab:
        L += ["", "In-process A/B of the UDF proposals: alert-state over the same 100-group frames, output "
              "discarded, CPU time of the agent's thread, variants in rotating order, median of runs "
              "(`python -m bench.profile ab`; the variants are stand-ins written in bench/profile.py):", ""]
        L += ["| variant | UDF CPU µs/point | vs current |", "|---|---|---|"]
        base = ab[0]["us"]
        for row in ab:
            L.append(f"| {row['variant']} | {row['us']:.2f} | {row['us'] / base - 1:+.1%} |")
    tab = notes.get("transport_ab") or []
    if tab:
        L += ["", "CPU per delivery POST to the fast receiver, this thread's CPU clock, median of runs "
              "(`python -m bench.profile transport`):", ""]
        L += ["| client | µs CPU / request |", "|---|---|"]
        for row in tab:
            L.append(f"| {row['variant']} | {row['us']:.0f} |")
    L.append("")
    keepalive = notes.get("keepalive")
    if keepalive:
        from .keepalive import markdown as keepalive_markdown

        origin = provenance.get("keepalive", {})
        L += [keepalive_markdown(keepalive, str(origin.get("command", "python -m bench --sections keepalive")))]
    path.write_text("\n".join(L) + "\n", encoding="utf-8")


def _origin(provenance: Dict[str, Dict[str, Any]], key: str) -> str:
    """Which run measured this section: command, date, load, runs."""
    p = provenance.get(key)
    if not p:
        return "*Run of origin not recorded (measured before results kept it per section).*"
    load = p.get("loadavg_at_start")
    load_text = f"; load average at start {', '.join(f'{x:.2f}' for x in load)}" if load else ""
    quick = "; **--quick: smoke-size inputs, figures meaningless**" if p.get("quick") else ""
    return (
        f"*Measured by `{p.get('command', '?')}` on {p.get('when', '?')} ({p.get('runs', '?')} runs per "
        f"figure, {float(p.get('seconds', 0)) / 60:.1f} min{load_text}{quick}).*"
    )


def _header(facts: Dict[str, Any], provenance: Dict[str, Dict[str, Any]], by_prefix: Dict[str, List[Figure]]) -> str:
    shown = [k for k in SECTION_ORDER + ["coalesce", "profile"] if k in by_prefix or (k == "profile" and k in provenance)]
    origins = {(provenance[k].get("command"), provenance[k].get("when")) for k in shown if k in provenance}
    method = (
        "Each figure is the **median of its runs** with min/max; the UDF comparisons are interleaved "
        "round by round and their ratios taken per round. Plot: [results.png](results.png)."
    )
    if len(origins) == 1 and all(k in provenance for k in shown):
        command, when = next(iter(origins))
        return f"Written by `{command}` on {when}. {method}"
    return (
        "These results merge several runs (`--sections`): each section below names the run that "
        f"measured it. Machine facts are from the last run ({facts.get('when', '?')}). {method}"
    )


def _other_cores(figs: List[Figure]) -> Optional[Tuple[float, float]]:
    values = [v for f in figs for v in [f.extra_median("other_cpu")] if v is not None]
    return (min(values), max(values)) if values else None


def write_plot(data: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figs: Dict[str, Figure] = {f.key: f for f in data["figures"] if f.values}
    facts = data["facts"]
    fig, axes = plt.subplots(2, 3, figsize=(19, 10))
    fig.suptitle(
        f"kapacitor-oncall benchmarks: {facts.get('cpu_model')}, {facts.get('cores')} cores, "
        f"Python {facts.get('python')}, protobuf {facts.get('protobuf')} ({facts.get('protobuf_backend')}); "
        f"median of {facts.get('runs')} runs, bars min-max; {facts.get('when')}",
        fontsize=10,
    )

    def hbars(
        ax: Any,
        keys: List[str],
        title: str,
        unit: str,
        targets: Sequence[Tuple[float, str]] = (),
        scale: float = 1.0,
    ) -> None:
        present = [figs[k] for k in keys if k in figs]
        if not present:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(title, fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
            return
        spreads = [f.spread() for f in present]
        med = [m / scale for m, _lo, _hi in spreads]
        err = [[lo / scale for _m, lo, _hi in spreads], [hi / scale for _m, _lo, hi in spreads]]
        colors = [
            "#7f7f7f" if f.unit == "×" else "#d62728" if f.label.startswith("InfluxData") else "#1f77b4"
            for f in present
        ]
        y = np.arange(len(present))
        ax.barh(y, med, xerr=err, color=colors, capsize=3)
        ax.set_yticks(y)
        ax.set_yticklabels([textwrap.fill(f.label, 38) for f in present], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(unit, fontsize=8)
        for i, (v, hi) in enumerate(zip(med, err[1])):
            ax.text(v + hi, i, f" {v:,.0f}" if v >= 10 else f" {v:.2f}", va="center", fontsize=7)
        for value, text in targets:
            ax.axvline(value / scale, color="green", linestyle="--", linewidth=1)
            ax.text(value / scale, len(present) - 0.55, f" {text}", color="green", fontsize=7, va="bottom")

    hbars(
        axes[0][0],
        ["udf.mirror", "udf.mirror-raw", "udf.mirror-socket", "udf.official-mirror",
         "udf.alert-state-g1", "udf.alert-state-g100", "udf.alert-state-g10k", "udf.official-moving-avg-g100"],
        "UDF throughput over pipes/socket (blue: ours, red: InfluxData)",
        "thousand points/s",
        [(220_000, "220k")],
        scale=1000,
    )
    hbars(axes[0][1], [k for k in figs if k.startswith("udf.ratio.")], "ours ÷ InfluxData, same rounds", "×",
          [(2.0, "target 2×")])
    hbars(axes[0][2], [k for k in figs if k.startswith("e2e.") and ".ratio." not in k], "through kapacitord",
          "thousand points/s", scale=1000)
    hbars(axes[1][0], ["mem.rss.no-expire", "mem.rss.expire"],
          "alert-state RSS: hosts coming and going, with and without expire", "MiB")

    def grouped(
        ax: Any,
        metric_keys: List[Tuple[str, str]],
        title: str,
        unit: str,
        targets: Sequence[Tuple[float, str, str]],
    ) -> None:
        scales = sorted({k.rsplit("ids", 1)[1] for k in figs if k.startswith("bridge.") and "ids" in k}, key=int)
        if not scales:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(title, fontsize=10)
            return
        x = np.arange(len(scales))
        width = 0.8 / len(metric_keys)
        for n, (prefix, label) in enumerate(metric_keys):
            fs = [figs.get(f"{prefix}.ids{s}") for s in scales]
            spreads = [f.spread() if f else (0.0, 0.0, 0.0) for f in fs]
            med = [m for m, _lo, _hi in spreads]
            err = [[lo for _m, lo, _hi in spreads], [hi for _m, _lo, hi in spreads]]
            pos = x - 0.4 + width * (n + 0.5)
            ax.bar(pos, med, width, yerr=err, capsize=3, label=label)
            for px, v, hi in zip(pos, med, err[1]):
                ax.text(px, v + hi, f"{v:,.0f}" if v >= 10 else f"{v:.1f}", ha="center", va="bottom", fontsize=7)
        for value, text, color in targets:
            ax.axhline(value, color=color, linestyle="--", linewidth=1)
            ax.text(x[-1] + 0.45, value, text, color=color, fontsize=7, ha="right", va="bottom")
        names = {"1": "1 id", "1000": "1k ids", "100000": "100k ids"}
        ax.set_xticks(x)
        ax.set_xticklabels([names.get(s, f"{int(s):,} ids") for s in scales], fontsize=8)
        ax.set_ylabel(unit, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7, loc="upper left")

    grouped(axes[1][1], [("bridge.accept", "accepted/s (durable)"), ("bridge.drain", "drained/s")],
            "bridge: accepted and delivered alerts/s, 50 clients", "alerts/s",
            [(5000, "accept target 5,000/s", "green"), (1000, "drain target 1,000/s", "purple")])
    grouped(axes[1][2], [("bridge.p50", "p50"), ("bridge.p99", "p99")],
            "bridge: accept latency (202 after commit)", "ms", [(20, "p99 target 20 ms", "green")])
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def render(json_path: Path, out_dir: Path) -> None:
    data = load_results(json_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_plot(data, out_dir / "results.png")
    write_markdown(data, out_dir / "results.md")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, default=BENCH_DIR / "results.json")
    p.add_argument("--out", type=Path, default=BENCH_DIR)
    args = p.parse_args(argv)
    render(args.json, args.out)
    print(f"wrote {args.out / 'results.md'} and {args.out / 'results.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
