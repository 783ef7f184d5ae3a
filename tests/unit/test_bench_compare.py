"""bench/compare.py's pure parts: run.sh output parsing, --offload detection, the table."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
import compare  # noqa: E402

RUN_SH = """\
lwip_version 2.1.3 debian_source=2.1.3+dfsg1-2 cc="gcc" kernel=6 cpu="AMD EPYC" nproc=2
lwip_build@wnd64k TCP_MSS=1460 TCP_WND=65535
ping_rtt_avg_ms@wnd64k 0.039 loss=0% (rtt min/avg/max/mdev = 0.020/0.039/0.091/0.008 ms)
udp_echo_per_s@wnd64k 187837 sent=375688 received=375688 (size=64 window=64 secs=2)
tcp_discard_MBps@wnd64k 296.4 (20 MiB kernel->lwIP)
tcp_chargen_MBps@wnd64k 419.3 (20 MiB lwIP->kernel, pattern checked)
tcp_echo_ok@wnd64k True (1 MiB, sha256 compared)
lwipd_cpu_s_during_tcp@wnd64k 0.17 of 0.25 s wall
lwipd_rss_kB@wnd64k 1980 peak=2048 threads=3 lwipd=alive
udp_echo_per_s@wnd1m-cli 200000 sent=1 received=1 (size=64 window=64 secs=2)
tcp_discard_MBps@wnd1m-cli n/a
tcp_probe@wnd1m-cli n/a (timeout 90s; ) lwipd=DEAD
wall_s 10
"""


def test_parse_lwip_rows() -> None:
    rows = compare.lwip_rows(compare.parse_lwip(RUN_SH))
    assert set(rows) == {"lwip_wnd64k", "lwip_wnd1m-cli"}
    r = rows["lwip_wnd64k"]
    assert r["udp_echo"] == 187837.0
    assert (r["tcp_discard"], r["tcp_chargen"], r["tcp_echo_ok"]) == (296.4, 419.3, True)
    assert round(r["cpu_pct"]["tcpprobe"]) == 68
    assert (r["rss_mb"], r["rss_peak_mb"]) == (1980 / 1024, 2.0)
    other = rows["lwip_wnd1m-cli"]
    assert other["udp_echo"] == 200000.0
    assert other["tcp_discard"] is None and other["tcp_echo_ok"] is False


def test_offload_detection() -> None:
    assert compare.offload_values("usage: netstack run [--mtu MTU]") is None
    assert compare.offload_values("  --offload {auto,off}  what to negotiate") == ["auto", "off"]
    assert compare.offload_values("  --offload {on,off}") == ["on", "off"]
    assert compare.offload_values("  --offload OFFLOAD  auto or off") == ["auto", "off"]


def test_render_and_judge() -> None:
    rows = compare.lwip_rows(compare.parse_lwip(RUN_SH))
    rows["netstack"] = {"udp_echo": 93918.5, "tcp_discard": 148.2, "cpu_pct": {"udp_echo": 99.0}}
    rows["kernel"] = {"udp_echo": 120000.0, "conn_rate": 10000.0, "echo_rtt_us": 20.0}
    rows["netstack"].update(conn_rate=8000.0, echo_rtt_us=31.0, rss_mb=40.0)
    rows["netstack"]["same_cpu"] = {"udp_echo": 73.4}
    table = compare.render(rows)
    line = next(ln for ln in table.splitlines() if "netstack" in ln and "/s" in ln)
    # 93 918 vs lwIP wnd64k 187 837 (0.50x), vs the best lwIP 200 000 (0.47x), vs kernel 0.78x
    assert "93 918" in line and "0.50x" in line and "0.47x" in line and "0.78x" in line
    assert " 99 " in line and "40.0" in line and " 73 " in line
    assert "10.5" in line  # CPU us per datagram: 0.99 s of CPU / 93 918 datagrams
    verdicts = compare.judge(rows)
    assert any("UDP echo" in v and v.endswith("MISS") for v in verdicts)
    assert any("connections" in v and v.endswith("PASS") for v in verdicts)  # 8000 >= 0.8 x 10000
    assert any("RTT" in v and v.endswith("MISS") for v in verdicts)  # 31 > 1.5 x 20
    assert compare.ratio(None, 1.0) == "-" and compare.ratio(2.0, 4.0) == "0.50x"


def test_tcp_targets_depend_on_the_offload_row() -> None:
    """Issue 10: with offloads, TCP >= 1.5x the best lwIP and >= 500 MB/s; without, >= wnd64k."""
    rows = {
        "lwip_wnd64k": {"tcp_discard": 200.0},
        "lwip_wnd1m-cli": {"tcp_discard": 300.0},
        "netstack_offload_auto": {"tcp_discard": 420.0},  # 1.4x the best: a MISS
        "netstack_offload_off": {"tcp_discard": 210.0},  # >= wnd64k: a PASS
    }
    verdicts = compare.judge(rows)
    auto = [v for v in verdicts if "offload auto" in v]
    off = [v for v in verdicts if "offload off" in v]
    assert any("1.5 x best lwIP" in v and v.endswith("MISS") for v in auto)
    assert any("500 MB/s" in v and v.endswith("MISS") for v in auto)  # 420 MiB/s < 476.8
    assert any("1 x lwIP wnd64k" in v and v.endswith("PASS") for v in off)
    assert not any("1.5 x" in v for v in off) and not any("wnd64k" in v for v in auto)


def test_cpu_per_op() -> None:
    assert compare.cpu_us_per_op(100_000.0, "/s", 50.0) == 5.0
    assert compare.cpu_us_per_op(40.0, "us", 50.0) == 20.0
    segments = 100 * (1 << 20) / compare.SEGMENT_BYTES
    assert abs(compare.cpu_us_per_op(100.0, "MiB/s", 100.0) - 1e6 / segments) < 1e-9
    assert compare.cpu_us_per_op(None, "/s", 50.0) is None
    assert compare.cpu_us_per_op(1.0, "/s", None) is None


def test_per_segment_row_is_an_offload_off_row() -> None:
    """Software GSO/GRO: the row with gso/gro off too is judged against lwIP wnd64k as well."""
    assert compare.row_mode(compare.PER_SEGMENT[0]) == "off"
    assert compare.row_mode("netstack_offload_off") == "off"
    assert compare.row_mode("netstack_offload_auto") == "auto"
    assert compare.row_label(compare.PER_SEGMENT[0]) == "netstack, offload off, gso/gro off"
    assert compare.has_soft_offloads("  --gso {auto,off}  ...\n  --gro {auto,off}")
    assert not compare.has_soft_offloads("  --offload {auto,off}")


class _FakeBench:
    """What warm_up drives: records the calls, fails the UDP load if told to."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple] = []
        self.fail = fail
        self.ns_a = "ns"
        self.stack_args: list[str] = []
        self.stack_cwd = None

    def start_stack(self) -> None:
        self.calls.append(("start", tuple(self.stack_args), self.stack_cwd))

    def udp_load(self, ns: str, seconds: float) -> dict:
        self.calls.append(("udp", ns, seconds))
        if self.fail:
            raise compare.BenchError("udpgen failed")
        return {}

    def client(self, ns: str, mode: str, port: int, seconds: float) -> dict:
        self.calls.append(("client", ns, mode, port, seconds))
        return {}

    def stop_stack(self) -> str:
        self.calls.append(("stop",))
        return ""


def test_warm_up_runs_the_first_rows_stack_under_both_loads_and_always_stops_it() -> None:
    bench = _FakeBench()
    where = Path("/tmp/checkout")
    compare.warm_up(bench, ("netstack_offload_auto", ["--offload", "auto"], where), 4.0)
    assert bench.calls == [
        ("start", ("--offload", "auto"), where),
        ("udp", "ns", 2.0),
        ("client", "ns", "conn", compare.tcp_bench.ECHO, 2.0),
        ("stop",),
    ]
    failing = _FakeBench(fail=True)
    with pytest.raises(compare.BenchError):
        compare.warm_up(failing, ("netstack_baseline", [], where), 2.0)
    assert failing.calls[-1] == ("stop",)


def test_warmup_seconds_are_bounded() -> None:
    with pytest.raises(SystemExit):
        compare.main(["--warmup", "31", "--no-lwip"])
