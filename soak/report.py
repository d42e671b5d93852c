"""The soak's result as Markdown and as a plot: a hand-written SVG (no plotting library needed
for three line charts) of throughput, latency and RSS over time, with the faults marked."""

from __future__ import annotations

import itertools
import statistics
from typing import Any
from xml.sax.saxutils import escape

PROCS = (("supervisor", "#9467bd"), ("worker0", "#ff7f0e"), ("worker1", "#8c564b"))


def _range(r: dict[str, Any]) -> str:
    return f"{r['min']} / {r['median']} / {r['max']}" if r else "not measured"


def after_overlaps(faults: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per kind, the catch-up counted from the end of the last fault that overlapped it, not
    from its own: a worker killed 15 s into a minute of webhook timeouts cannot catch up before
    the timeouts end (min / median / max, seconds)."""
    by_kind: dict[str, list[float]] = {}
    for f in faults:
        if f.get("caught_up_s") is None:
            continue
        done = f["ended"] + f["caught_up_s"]
        last = max(
            [f["ended"]]
            + [g["ended"] for g in faults if g["started"] <= done and g["ended"] >= f["started"]]
        )
        by_kind.setdefault(f["kind"], []).append(round(max(0.0, done - last), 1))
    return {
        kind: {"min": min(v), "median": statistics.median(v), "max": max(v)}
        for kind, v in by_kind.items()
    }


def starved_workers(samples: list[dict[str, Any]], min_s: float = 60.0) -> list[dict[str, Any]]:
    """Spans of at least ``min_s`` in which the broker sent one worker nothing while it sent
    another worker messages, from the samples' per-consumer counters (a counter that restarts,
    with the broker or the worker, ends a span). With each: the worker's permits and
    unacknowledged messages at its end, per topic, and the CPU it used, which tell a worker
    that was full (no permits) from one the broker left out."""
    found: list[dict[str, Any]] = []
    runs: dict[str, dict[str, Any]] = {}
    for prev, cur in itertools.pairwise(samples):
        deltas = _out_deltas(prev, cur)
        for name, delta in deltas.items():
            others = sum(d for n, d in deltas.items() if n != name)
            run = runs.get(name)
            if delta == 0 and others > 0:
                if run is None:
                    run = runs[name] = {"from": prev["t"], "others": 0, "cpu0": _cpu(prev, name)}
                run["others"] += others
                run["to"], run["end"] = cur["t"], cur
                continue
            runs.pop(name, None)
            if run is not None:
                found += _span(name, run, min_s)
        for name in set(runs) - set(deltas):
            found += _span(name, runs.pop(name), min_s)
    for name, run in runs.items():
        found += _span(name, run, min_s)
    return sorted(found, key=lambda f: f["from"])


def _out_deltas(prev: dict[str, Any], cur: dict[str, Any]) -> dict[str, int]:
    """Messages the broker sent each worker between two samples, for the workers that were the
    same process with a counter that went on in both."""
    got: dict[str, int] = {}
    for name, c in cur.get("consumers", {}).items():
        p = prev.get("consumers", {}).get(name)
        same = prev.get("procs", {}).get(name, {}).get("pid") == cur["procs"][name]["pid"]
        if p is not None and same and c["out"] >= p["out"]:
            got[name] = c["out"] - p["out"]
    return got


def _cpu(sample: dict[str, Any], name: str) -> float:
    return float(sample.get("procs", {}).get(name, {}).get("cpu_s", 0.0))


def _span(name: str, run: dict[str, Any], min_s: float) -> list[dict[str, Any]]:
    if run["to"] - run["from"] < min_s:
        return []
    end = run["end"]
    c = end["consumers"][name]
    return [
        {
            "worker": name,
            "from": run["from"],
            "to": run["to"],
            "others_took": run["others"],
            "permits": c["permits"],
            "unacked": c["unacked"],
            "cpu_s": round(_cpu(end, name) - run["cpu0"], 2),
        }
    ]


def markdown(r: dict[str, Any], plot: str = "") -> str:
    v = r["verdict"]
    lines = [
        f"# Soak {r['finished_at']}",
        "",
        f"Machine: {r['machine']}; shared with other work while it ran (load average at the "
        f"start {fmt_load(r.get('load_average_at_start'))}, at the end "
        f"{fmt_load(r.get('load_average_at_end'))}).",
        "",
        "Verdicts: " + ", ".join(f"{k} **{'yes' if ok else 'NO'}**" for k, ok in v.items()),
        "",
        f"- load: {r['duration_s']} s at {r['settings']['rate']} jobs/s; "
        f"jobs submitted {r['jobs_submitted']}, finished by CI (the emulator's journal) "
        f"{r.get('jobs_finished_by_ci', '?')}; delivered: files {r['delivered']['files']}, "
        f"webhook {r['delivered']['webhook']}",
        f"- **lost: {r['lost_count']}**; **double effects**: files "
        f"{r['double_effects']['files']}, webhook {r['double_effects']['webhook']} (repeat "
        f"deliveries of an identical record, absorbed by the idempotency key: files "
        f"{r['repeat_deliveries']['files']}, webhook {r['repeat_deliveries']['webhook']})",
        f"- dead letters: {r['dead_letters']} ({r['dead_letters_not_planted']} not planted; "
        f"{r['planted']} hostile messages planted)",
        f"- owed at the end: {r['owed_at_end']} jobs CI made; "
        f"{r.get('unknown_creates_at_end', '-')} creates still pending whose outcome "
        f"`asrd submit` could not learn (it reported {r['submit_failed']} without a job id); "
        f"daemon starts: {r['daemon_starts']}; exits nobody "
        f"asked for: {len(r['daemon_unexpected_exits'])}",
        f"- latency CI end → file sink, outside fault windows: {r['latency_s_outside_faults']}",
        f"- network degradation: {r['network_degrade']}",
        f"- warnings/errors logged under the skewed clock: {r['clock_skew_log_events'] or '-'}",
        "",
        f"{r['fault_count']} faults of {len(r['fault_kinds'])} kinds. Resumed: both sinks take "
        "new records after the fault's end; caught up: the backlog is back to normal; the last "
        "column counts from the end of the last fault that overlapped it (a short fault inside "
        "a long one, or a second phase following its first).",
        "",
        "| fault | count | resumed min / median / max (s) | caught up min / median / max (s) "
        "| caught up after the last overlapping fault (s) |",
        "|---|---|---|---|---|",
    ]
    overlaps = after_overlaps(r.get("faults", []))
    for kind, k in r["fault_kinds"].items():
        cells = [k["resumed_s"], k["caught_up_s"], overlaps.get(kind, {})]
        lines.append(f"| {kind} | {k['count']} | " + " | ".join(map(_range, cells)) + " |")
    lines += ["", "| measure (mean) | 2nd quarter | last quarter | growth |", "|---|---|---|---|"]
    for name, g in r["growth"].items():
        lines.append(f"| {name} | {g['q2']} | {g['q4']} | {g['growth']:+.1%} |")
    lives = longest_lives(r.get("samples", []))
    if lives:
        lines += [
            "",
            "RSS within each process's longest life (one pid; the run's quarters above mix "
            "processes the faults restarted): "
            + "; ".join(
                f"{name} {v['from']:.0f}-{v['to']:.0f} s: {v['q2']} → {v['q4']} KiB "
                f"({v['growth']:+.1%})"
                for name, v in sorted(lives.items())
            ),
        ]
    lv = levels_after_faults(r)
    lines += [
        "",
        "Open FDs and broker connections back to their level after each fault (no higher than "
        "the highest before it, 10 s after it caught up): "
        f"{lv['faults_compared'] - len(lv['higher_after'])} of {lv['faults_compared']}; "
        f"higher after: {lv['higher_after'] or 'none'}",
    ]
    starved = starved_workers(r.get("samples", []))
    lines += [
        "",
        "Workers the broker sent nothing for 60 s or more while it sent another worker messages "
        "(permits and unacknowledged messages per topic at the end; CPU used): "
        + (
            "; ".join(
                f"{w['worker']} {w['from']}-{w['to']} s (the others took {w['others_took']}; "
                f"permits {w['permits']}, unacked {w['unacked']}, CPU {w['cpu_s']} s)"
                for w in starved
            )
            or ("none" if any("consumers" in s for s in r.get("samples", [])) else "not sampled")
        ),
    ]
    if plot:
        lines += ["", f"![throughput, latency and RSS over time]({plot})"]
    return "\n".join(lines) + "\n"


def longest_lives(samples: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per process name, its longest life (one pid, in consecutive samples) and its RSS growth
    within that life, second quarter against last as for the run: the run's quarters mix
    processes of different ages when faults restart them."""
    lives: dict[str, list[tuple[int, list[dict[str, Any]]]]] = {}
    for s in samples:
        for name, p in s.get("procs", {}).items():
            if "pid" not in p:  # a result from before samples named the pid
                continue
            runs = lives.setdefault(name, [])
            if runs and runs[-1][0] == p["pid"]:
                runs[-1][1].append({"t": s["t"], "rss_kib": p["rss_kib"]})
            else:
                runs.append((p["pid"], [{"t": s["t"], "rss_kib": p["rss_kib"]}]))
    out: dict[str, dict[str, Any]] = {}
    for name, runs in lives.items():
        pid, life = max(runs, key=lambda r: r[1][-1]["t"] - r[1][0]["t"])
        n = len(life)
        if n < 8:
            continue
        rss = [x["rss_kib"] for x in life]
        growth = growth_between(rss[n // 4 : n // 2], rss[3 * n // 4 :])
        if growth is not None:
            out[name] = {"pid": pid, "from": life[0]["t"], "to": life[-1]["t"], **growth}
    return out


def growth_between(q2: list[float], q4: list[float]) -> dict[str, float] | None:
    """The mean of ``q2`` (a second quarter) against the mean of ``q4`` (the last); None when
    either is empty or the first is 0."""
    if not q2 or not q4 or not statistics.mean(q2):
        return None
    a, b = statistics.mean(q2), statistics.mean(q4)
    return {"q2": round(a, 1), "q4": round(b, 1), "growth": round(b / a - 1, 3)}


def _fds(sample: dict[str, Any]) -> int:
    return sum(p["fds"] for p in sample["procs"].values())


def levels_after_faults(r: dict[str, Any]) -> dict[str, Any]:
    """Open FDs (all asrd processes) and broker connections after each fault (the median of
    the three samples from 10 s after it caught up) against the highest level seen before it.
    Pools and producers open lazily, so a level may rise once; a leak makes a new high after
    fault upon fault, and those faults are listed."""
    samples = [s for s in r["samples"] if s.get("procs")]
    higher = []
    compared = 0
    for f in r["faults"]:
        settled = f["ended"] + (f.get("caught_up_s") or 60.0) + 10
        before = [s for s in samples if s["t"] < f["started"]]
        after = [s for s in samples if s["t"] > settled][:3]
        if not before or not after:
            continue
        compared += 1
        fds = (max(_fds(s) for s in before), sorted(_fds(s) for s in after)[len(after) // 2])
        conns_after = sorted(s.get("broker_connections", 0) for s in after)[len(after) // 2]
        conns = (max(s.get("broker_connections", 0) for s in before), conns_after)
        if fds[1] > fds[0] * 1.1 or conns[1] > conns[0]:
            higher.append(
                {"kind": f["kind"], "at": round(f["started"]), "fds": fds, "conns": conns}
            )
    return {"faults_compared": compared, "higher_after": higher}


def fmt_load(load: Any) -> str:
    return " ".join(f"{x:.2f}" for x in load) if load else "?"


def svg(r: dict[str, Any]) -> str:
    """Three panels sharing the time axis; faults as shaded spans (instants as lines)."""
    samples = r["samples"]
    width, panel_h, left, top = 900, 160, 60, 20
    end = max([s["t"] for s in samples] + [f["ended"] for f in r["faults"]] + [1.0])
    panels: list[tuple[str, list[tuple[str, str, list[tuple[float, float]]]]]] = [
        ("delivered jobs/s (file sink)", [("rate", "#1f77b4", _series(samples, "rate"))]),
        (
            "latency CI end → file sink (s)",
            [
                ("p50", "#2ca02c", _series(samples, "latency_p50")),
                ("p99", "#d62728", _series(samples, "latency_p99")),
            ],
        ),
        (
            "RSS (MiB)",
            [(p, c, [(t, y / 1024) for t, y in _proc(samples, p)]) for p, c in PROCS],
        ),
    ]
    height = top + len(panels) * (panel_h + 40) + 20
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    plot_w = width - left - 20

    def x(t: float) -> float:
        return left + plot_w * t / end

    for i, (title, lines) in enumerate(panels):
        y0 = top + i * (panel_h + 40) + 15
        ymax = max([y for _, _, pts in lines for _, y in pts] + [1e-9]) * 1.1
        out.append(f'<text x="{left}" y="{y0 - 4}" font-weight="bold">{escape(title)}</text>')
        for f in r["faults"]:
            a, b = x(f["started"]), x(f["ended"])
            out.append(
                f'<rect x="{a:.1f}" y="{y0}" width="{max(1.0, b - a):.1f}" height="{panel_h}" '
                f'fill="#f4a582" fill-opacity="0.35"><title>{escape(f["kind"])}</title></rect>'
            )
            if i == 0:
                out.append(
                    f'<text x="{a:.1f}" y="{y0 + 10}" font-size="8" '
                    f'transform="rotate(90 {a:.1f} {y0 + 10})">{escape(f["kind"])}</text>'
                )
        out.append(
            f'<rect x="{left}" y="{y0}" width="{plot_w}" height="{panel_h}" fill="none" '
            'stroke="#888"/>'
        )
        out.append(f'<text x="{left - 5}" y="{y0 + 8}" text-anchor="end">{ymax:.3g}</text>')
        out.append(f'<text x="{left - 5}" y="{y0 + panel_h}" text-anchor="end">0</text>')
        for k, (name, colour, pts) in enumerate(lines):
            if pts:
                path = " ".join(
                    f"{x(t):.1f},{y0 + panel_h - panel_h * y / ymax:.1f}" for t, y in pts
                )
                out.append(
                    f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.2"/>'
                )
            out.append(
                f'<text x="{left + plot_w - 5}" y="{y0 + 12 + 12 * k}" text-anchor="end" '
                f'fill="{colour}">{escape(name)}</text>'
            )
        axis = y0 + panel_h + 14
        for t in range(0, int(end) + 1, max(60, int(end / 10) // 60 * 60 or 60)):
            out.append(f'<text x="{x(t):.1f}" y="{axis}" text-anchor="middle">{t}s</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _series(samples: list[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    return [(s["t"], float(s[key])) for s in samples if key in s]


def _proc(samples: list[dict[str, Any]], name: str) -> list[tuple[float, float]]:
    return [(s["t"], float(s["procs"][name]["rss_kib"])) for s in samples if name in s["procs"]]


def main() -> None:
    """``python -m soak.report <result.json>``: the .md and .svg again from a result (after
    the report gained something, or to look at an old run)."""
    import json
    import sys
    from pathlib import Path

    path = Path(sys.argv[1])
    r = json.loads(path.read_text())
    path.with_suffix(".md").write_text(markdown(r, path.with_suffix(".svg").name))
    path.with_suffix(".svg").write_text(svg(r))


if __name__ == "__main__":
    main()
