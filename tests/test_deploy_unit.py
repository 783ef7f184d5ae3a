"""deploy/: the systemd unit passes `systemd-analyze verify` and scores <= 2.5 in
`systemd-analyze security`, says what the stack needs (notify, watchdog, one capability, one
device), and the example config is valid and documents every setting."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from netstack.config import SETTINGS, build_config, load_toml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
UNIT = DEPLOY / "netstack.service"
EXAMPLE = DEPLOY / "netstack.toml"
BINARY = "/opt/netstack/bin/netstack"
MAX_EXPOSURE = 2.5

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def _directives(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) in order; systemd allows a key to repeat."""
    out, section = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def _values(key: str, section: str = "Service") -> list[str]:
    return [v for s, k, v in _directives(UNIT.read_text()) if s == section and k == key]


def _seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "min": 60}
    match = re.fullmatch(r"(\d+)(ms|s|min)?", value)
    assert match, value
    return int(match[1]) * units[match[2] or "s"]


@needs_analyze
def test_systemd_analyze_verify_prints_nothing(tmp_path: Path) -> None:
    """verify also checks that ExecStart binaries exist: point them at a real executable in a
    copy (the only change), since /opt/netstack is not installed where the tests run."""
    stub = tmp_path / "netstack"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    text = UNIT.read_text()
    assert text.count(BINARY) == 2  # ExecStartPre and ExecStart
    copy = tmp_path / "netstack.service"
    copy.write_text(text.replace(BINARY, str(stub)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@needs_analyze
def test_systemd_analyze_verify_only_misses_the_install(tmp_path: Path) -> None:
    """The unmodified unit's only complaint is the binary the README installs."""
    if Path(BINARY).exists():
        pytest.skip(f"{BINARY} is installed here")
    result = subprocess.run(
        ["systemd-analyze", "verify", str(UNIT)], capture_output=True, text=True, timeout=60
    )
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert lines and all(f"Command {BINARY} is not executable" in line for line in lines), lines


@needs_analyze
def test_systemd_analyze_security_exposure_is_low() -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for netstack\.service: (\d+(?:\.\d+)?)", output)
    assert match, output
    assert float(match[1]) <= MAX_EXPOSURE, output


def test_unit_asks_for_what_the_stack_needs_and_no_more() -> None:
    single = {
        "Type": "notify",
        "NotifyAccess": "main",
        "Restart": "on-failure",
        "CapabilityBoundingSet": "CAP_NET_ADMIN",
        "AmbientCapabilities": "CAP_NET_ADMIN",
        "DevicePolicy": "closed",
        "DeviceAllow": "/dev/net/tun rw",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK AF_PACKET",
        "StateDirectory": "netstack",
        "LogsDirectory": "netstack",
        "ExecStartPre": f"{BINARY} check-config /etc/netstack/netstack.toml",
        "ExecStart": f"{BINARY} run --config /etc/netstack/netstack.toml",
        "ExecReload": "/bin/kill -HUP $MAINPID",
    }
    for key, value in single.items():
        assert _values(key) == [value], key
    assert "@system-service" in _values("SystemCallFilter")
    assert _seconds(_values("WatchdogSec")[0]) > 0


def test_stop_timeout_leaves_room_for_the_grace_period() -> None:
    """systemd must not SIGKILL while connections are still closing (shutdown_timeout)."""
    example = build_config(load_toml(EXAMPLE))
    default = build_config()
    stop = _seconds(_values("TimeoutStopSec")[0])
    assert stop > max(example.shutdown_timeout, default.shutdown_timeout) + 5


def test_example_config_is_valid_and_is_the_lab_layout() -> None:
    config = build_config(load_toml(EXAMPLE), source=str(EXAMPLE))
    assert config.interface == "tap0"
    assert str(config.address) == "10.0.0.2/24"
    assert str(config.host_address) == "10.0.0.1/24"


def test_example_config_documents_every_setting() -> None:
    """Each setting appears in the example, set or commented out with its default."""
    text = EXAMPLE.read_text()
    section = ""
    seen = set()
    for raw in text.splitlines():
        line = raw.lstrip("# ").strip()
        if re.fullmatch(r"\[[a-z_]+\]", line):
            section = line[1:-1] + "."
            continue
        match = re.match(r"([a-z0-9_]+)\s*=", line)
        if match:
            seen.add(section + match[1])
    missing = [s.key for s in SETTINGS if s.key not in seen]
    assert not missing, f"document these settings in deploy/netstack.toml: {missing}"


def test_example_pcap_path_is_writable_under_the_unit() -> None:
    """ProtectSystem=strict: only StateDirectory/LogsDirectory are writable."""
    writable = ("/var/log/netstack/", "/var/lib/netstack/")
    for raw in EXAMPLE.read_text().splitlines():
        match = re.match(r"#?\s*pcap\s*=\s*\"([^\"]+)\"", raw.strip())
        if match:
            assert match[1].startswith(writable), raw
