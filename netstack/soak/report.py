"""The soak's report: report.md (verdicts, settings, tables, plots), report.json (the same as
data) and PNG plots drawn with matplotlib's Agg backend (no display needed). The raw series are
samples.jsonl beside them, one sample per line.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from netstack.soak import criteria

PHASE_COLOURS = {"flood": "tab:red", "loss": "tab:orange", "reorder": "tab:purple",
                 "delay": "tab:blue"}  # fmt: skip
TOP_REASONS = 8


def rates(samples: Sequence[dict], key: Callable[[dict], float | None]) -> tuple[list, list]:
    """Per-second rates of a counter between consecutive samples (gaps and resets skipped)."""
    xs, ys = [], []
    for a, b in itertools.pairwise(samples):
        va, vb = key(a), key(b)
        dt = b["t"] - a["t"]
        if va is None or vb is None or dt <= 0 or vb < va:
            continue
        xs.append(b["t"])
        ys.append((vb - va) / dt)
    return xs, ys


def _scale(samples: Sequence[dict]) -> tuple[float, str]:
    span = samples[-1]["t"] if samples else 0
    return (3600.0, "hours") if span > 4 * 3600 else (60.0, "minutes")


# -- plots ---------------------------------------------------------------------------------------
def plot_all(out: Path, samples: Sequence[dict], meta: dict[str, Any], ev: criteria.Evidence):
    """Draw every plot; returns {file name: caption}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(samples) < 2:
        return {}
    unit, label = _scale(samples)
    load = [s for s in samples if s["t"] >= 0]

    def axes(title: str, ylabel: str, n: int = 1):
        fig, axs = plt.subplots(n, 1, figsize=(11, 3.6 * n), sharex=True, squeeze=False)
        for ax in axs[:, 0]:
            for p in meta["phases"]:
                if p["kind"] in PHASE_COLOURS:
                    ax.axvspan(p["start"] / unit, p["end"] / unit, alpha=0.10, lw=0,
                               color=PHASE_COLOURS[p["kind"]])  # fmt: skip
            ax.axvline(meta["duration"] / unit, color="grey", ls=":", lw=1)
            ax.grid(alpha=0.3)
        axs[0, 0].set_title(title + "  (shaded: " + ", ".join(
            f"{k} {c.split(':')[1]}" for k, c in PHASE_COLOURS.items()) + "; dotted: load end)",
            fontsize=9)  # fmt: skip
        axs[0, 0].set_ylabel(ylabel)
        axs[-1, 0].set_xlabel(f"time since load start ({label})")
        return fig, axs[:, 0]

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=90)
        plt.close(fig)

    def xs(ts):
        return [t / unit for t in ts]

    made: dict[str, str] = {}
    fig, (ax,) = axes("Frames per second at the stack", "frames/s")
    for key, name in (("rx_packets", "received"), ("tx_packets", "sent")):
        x, y = rates(load, lambda s, k=key: s.get(k))
        ax.plot(xs(x), y, label=name, lw=1)
    ax.legend(loc="upper right")
    save(fig, "pps.png")
    made["pps.png"] = "frames/s received and sent (rate of netstack_rx/tx_packets_total)"

    totals: dict[str, int] = {}
    for s in load:
        for r, v in (s.get("drops") or {}).items():
            totals[r] = max(totals.get(r, 0), v)
    top = sorted(totals, key=lambda r: -totals[r])[:TOP_REASONS]
    fig, (ax,) = axes("Drops per second by reason (netstack_drops_total)", "drops/s")
    for r in top:
        x, y = rates(
            load, lambda s, r=r: (s.get("drops") or {}).get(r, 0) if "drops" in s else None
        )
        ax.plot(xs(x), y, label=f"{r} ({totals[r]})", lw=1)
    rest = [r for r in totals if r not in top]
    if rest:
        x, y = rates(load, lambda s: sum((s.get("drops") or {}).get(r, 0) for r in rest)
                     if "drops" in s else None)  # fmt: skip
        ax.plot(xs(x), y, label=f"{len(rest)} other reasons", lw=1, color="black")
    if totals:
        ax.legend(loc="upper right", fontsize=7)
    save(fig, "drops.png")
    made["drops.png"] = "drops/s for the most frequent reasons (totals in the legend)"

    fig, (ax,) = axes("TCP retransmissions and timeouts per second", "per second")
    for key, name in (("tcp_retransmits", "retransmitted segments"),
                      ("tcp_timeouts", "RTO expiries")):  # fmt: skip
        x, y = rates(load, lambda s, k=key: s.get(k))
        ax.plot(xs(x), y, label=name, lw=1)
    ax.legend(loc="upper right")
    save(fig, "tcp.png")
    made["tcp.png"] = "TCP retransmitted segments/s and retransmission timeouts/s"

    fig, (ax,) = axes("TCP connections by state (netstack_tcp_connections)", "connections")
    states = sorted({k for s in samples for k, v in (s.get("conns") or {}).items() if v})
    for state in states:
        pts = [(s["t"], s["conns"].get(state, 0)) for s in samples if "conns" in s]
        ax.plot(xs([p[0] for p in pts]), [p[1] for p in pts], label=state, lw=1)
    if states:
        ax.legend(loc="upper right", fontsize=8)
    save(fig, "connections.png")
    made["connections.png"] = "TCP connections per state, settle period included"

    fig, (ax1, ax2, ax3) = axes(
        "Stack process: RSS, open fds, CPU (from /proc/PID)", "RSS (MiB)", 3
    )
    pts = [(s["t"], s["rss"] / criteria.MIB) for s in samples if s.get("rss")]
    ax1.plot(xs([p[0] for p in pts]), [p[1] for p in pts], lw=1, label="RSS")
    window, slope = criteria.rss_fit(ev)
    if len(window) >= 2:
        wx = [s["t"] for s in window]
        wy = [s["rss"] / criteria.MIB for s in window]
        mx, my = sum(wx) / len(wx), sum(wy) / len(wy)
        fit = [my + slope * (t - mx) / 3600.0 for t in (wx[0], wx[-1])]
        ax1.plot(xs([wx[0], wx[-1]]), fit, "r--", lw=1.5,
                 label=f"fit after warm-up: {slope:+.2f} MiB/h")  # fmt: skip
    ax1.legend(loc="lower right")
    pts = [(s["t"], s["fds"]) for s in samples if "fds" in s]
    ax2.plot(xs([p[0] for p in pts]), [p[1] for p in pts], lw=1, color="tab:green")
    ax2.set_ylabel("open fds")
    x, y = rates(samples, lambda s: s.get("cpu"))
    ax3.plot(xs(x), [v * 100 for v in y], lw=1, color="tab:brown")
    ax3.set_ylabel("CPU %")
    save(fig, "resources.png")
    made["resources.png"] = "RSS with the least-squares fit, open fds, CPU % of one core"

    fig, (ax,) = axes("ping RTT per sample interval (min / avg / max) and losses", "RTT (ms)")
    pings = [s for s in load if s.get("ping") and s["ping"]["n"]]
    if pings:
        t = xs([s["t"] for s in pings])
        ax.fill_between(t, [s["ping"]["min"] for s in pings], [s["ping"]["max"] for s in pings],
                        alpha=0.3, label="min..max")  # fmt: skip
        ax.plot(t, [s["ping"]["avg"] for s in pings], lw=1, label="avg")
        ax.set_yscale("log")
    lost = [s for s in load if s.get("ping") and s["ping"]["lost"]]
    if lost:
        ax2 = ax.twinx()
        ax2.bar(
            xs([s["t"] for s in lost]),
            [s["ping"]["lost"] for s in lost],
            width=meta["sample_interval"] / unit,
            color="red",
            alpha=0.6,
            label="lost",
        )
        ax2.set_ylabel("pings lost per interval", color="red")
    ax.legend(loc="upper left")
    save(fig, "ping.png")
    made["ping.png"] = "ping RTT (log scale) and losses per sample interval"
    return made


# -- the documents -------------------------------------------------------------------------------
def _ping_summary(samples: Sequence[dict]) -> dict[str, Any]:
    pings = [s["ping"] for s in samples if s.get("ping")]
    n = sum(p["n"] for p in pings)
    lost = sum(p["lost"] for p in pings)
    avgs = [p["avg"] * p["n"] for p in pings if p["n"]]
    return {
        "replies": n,
        "lost": lost,
        "loss": lost / (n + lost) if n + lost else None,
        "min_ms": min((p["min"] for p in pings if p["n"]), default=None),
        "avg_ms": sum(avgs) / n if n else None,
        "max_ms": max((p["max"] for p in pings if p["n"]), default=None),
    }


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return "" if v is None else str(v)


def write(
    out: Path,
    samples: Sequence[dict],
    verdicts: Sequence[criteria.Verdict],
    ev: criteria.Evidence,
    meta: dict[str, Any],
    passed: bool,
) -> None:
    try:
        plots = plot_all(out, samples, meta, ev)
    except Exception as err:  # a report without pictures still says pass or fail
        plots, meta["plot_error"] = {}, repr(err)
    window, slope = criteria.rss_fit(ev)
    summary = {
        "passed": passed,
        "verdicts": [v.as_dict() for v in verdicts],
        "generators": dict(ev.generators),
        "ping": _ping_summary(samples),
        "rss_slope_mib_per_hour": slope,
        "rss_fit_samples": len(window),
        "rss_first_mib": samples[0]["rss"] / criteria.MIB if samples and samples[0].get("rss")
        else None,
        "rss_last_mib": samples[-1]["rss"] / criteria.MIB if samples and samples[-1].get("rss")
        else None,
        "baseline": ev.baseline,
        "final": ev.final,
        "samples": len(samples),
        "plots": plots,
        **meta,
    }  # fmt: skip
    (out / "report.json").write_text(json.dumps(summary, indent=1, default=str))
    (out / "report.md").write_text(_markdown(summary, verdicts, ev))


def _markdown(summary: dict[str, Any], verdicts: Sequence[criteria.Verdict], ev) -> str:
    lines = [
        f"# netstack soak: {'PASSED' if summary['passed'] else 'FAILED'}",
        "",
        f"{summary['duration']:g} s of load in {len(summary['phases'])} phases of "
        f"{summary['phase_length']:g} s, samples every {summary['sample_interval']:g} s "
        f"({summary['samples']} samples), warm-up {summary['warmup']:g} s, settle up to "
        f"{summary['settle']:g} s (2*MSL = TIME_WAIT {summary['time_wait']:g} s; back after "
        f"{_fmt(summary.get('settled_after'))} s).",
        "",
        "## Criteria",
        "",
        "| | criterion | measured | bound |",
        "|---|---|---|---|",
    ]
    for v in verdicts:
        lines.append(f"| {'PASS' if v.passed else '**FAIL**'} | {v.name} | {v.measured} | "
                     f"{v.bound} |")  # fmt: skip
    lines += [
        "",
        "## Generators",
        "",
        "| generator | rate | attempts | ok | failed | of which in floods | corrupt | verified "
        "| bytes | sent | received |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, g in summary["generators"].items():
        lines.append(
            f"| {name} | {g['rate']:g} | {g['attempts']} | {g['ok']} | {g['fail']} | "
            f"{g['fail_flood']} | {g['corrupt']} | {g['verified']} | {g['bytes']} | "
            f"{g['sent']} | {g['received']} |"
        )
    p = summary["ping"]
    lines += [
        "",
        f"ping: {p['replies']} replies, {p['lost']} lost "
        f"({_fmt(p['loss'] and p['loss'] * 100)} %), RTT min/avg/max "
        f"{_fmt(p['min_ms'])} / {_fmt(p['avg_ms'])} / {_fmt(p['max_ms'])} ms.",
        f"RSS: {_fmt(summary['rss_first_mib'])} MiB at the first sample, "
        f"{_fmt(summary['rss_last_mib'])} MiB at the last; slope after warm-up "
        f"{summary['rss_slope_mib_per_hour']:+.2f} MiB/h ({summary['rss_fit_samples']} samples).",
        "",
        "## Phases",
        "",
        " ".join(f"{q['kind']}@{q['start']:g}s" for q in summary["phases"]),
        "",
        "Relay (impairment wire) counters: `" + json.dumps(summary.get("relay", {})) + "`",
        "",
        "## Drops by reason at the end",
        "",
        "| reason | count |",
        "|---|---|",
    ]
    for reason, count in sorted((ev.final.get("drops") or {}).items(), key=lambda kv: -kv[1]):
        lines.append(f"| {reason} | {count} |")
    if summary.get("failures"):
        lines += ["", "## Failures (last few per generator)", ""]
        for name, items in summary["failures"].items():
            for item in items[-5:]:
                lines.append(f"- {name}: {json.dumps(item)}")
    lines += ["", "## Plots", ""]
    for name, caption in summary["plots"].items():
        lines += [f"![{caption}]({name})", f"*{caption}*", ""]
    if summary.get("plot_error"):
        lines.append(f"Plots failed: {summary['plot_error']}")
    lines += ["", f"Rates: `{json.dumps(summary['rates'])}`; bounds: "
              f"`{json.dumps(summary['bounds'])}`; raw series: samples.jsonl.", ""]  # fmt: skip
    return "\n".join(lines)
