"""Config: defaults, TOML, flags over file, and one-line errors that name the key."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from netstack.cli import main
from netstack.config import ConfigError, build_config, load_toml


def test_defaults_are_the_documented_contract() -> None:
    config = build_config()
    assert config.link == "tap"
    assert config.interface == "tap0"
    assert config.address == ipaddress.IPv4Interface("192.0.2.2/24")
    assert config.host_address == ipaddress.IPv4Interface("192.0.2.1/24")
    assert config.gateway is None
    assert config.service_ports() == {"udp_echo": 7, "udp_discard": 9}


def test_stable_locally_administered_mac() -> None:
    a = build_config().stack_mac()
    assert a == build_config().stack_mac()
    assert a[0] & 0x02 and not a[0] & 0x01
    assert a != build_config({"address": "192.0.2.3/24"}).stack_mac()
    assert build_config({"mac": "02:00:00:00:00:01"}).stack_mac() == bytes.fromhex("020000000001")


def test_host_address_none() -> None:
    assert build_config({"host_address": "none"}).host_address is None


def test_toml_and_flags_layering(tmp_path: Path) -> None:
    path = tmp_path / "n.toml"
    path.write_text('interface = "tap7"\naddress = "10.0.0.2/24"\n[services]\nudp_echo = false\n')
    config = build_config(load_toml(path), {"interface": "tap9"})
    assert config.interface == "tap9"
    assert config.address.ip == ipaddress.IPv4Address("10.0.0.2")
    assert config.services_udp_echo is None


@pytest.mark.parametrize(
    ("layer", "key"),
    [
        ({"adress": "1.2.3.4/24"}, "adress"),
        ({"address": "192.0.2.2"}, "address"),
        ({"address": "300.1.1.1/24"}, "address"),
        ({"address": "192.0.2.255/24"}, "address"),
        ({"mtu": 20}, "mtu"),
        ({"link": "wifi"}, "link"),
        ({"services.udp_echo": 70000}, "services.udp_echo"),
        ({"gateway": "198.51.100.1"}, "gateway"),
        ({"interface": "a-name-that-is-too-long"}, "interface"),
        ({"mac": "01:00:5e:00:00:01"}, "mac"),
        ({"busy_poll": "fast"}, "busy_poll"),
        ({"busy_poll": 1001}, "busy_poll"),
    ],
)
def test_bad_values_name_the_key(layer: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_config(layer)
    assert f"'{key}'" in str(err.value)
    assert "\n" not in str(err.value)


def test_check_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.toml"
    good.write_text('address = "10.0.0.2/24"\nhost_address = "10.0.0.1/24"\n')
    assert main(["check-config", str(good)]) == 0
    assert "address = 10.0.0.2/24" in capsys.readouterr().out

    bad = tmp_path / "bad.toml"
    bad.write_text("bogus = 1\n")
    assert main(["check-config", str(bad)]) == 2
    assert "unknown setting 'bogus'" in capsys.readouterr().err

    assert main(["check-config", str(tmp_path / "missing.toml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_run_rejects_bad_address_before_touching_the_system(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run", "--address", "not-an-ip"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("netstack: ") and "'address'" in err


@pytest.mark.parametrize("command", ["run", "check-config"])
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('adress = "10.0.0.2/24"\n', "unknown setting 'adress'"),
        ('address = "10.0.0.300/24"\n', "bad value for 'address'"),
        ("[services]\nudp_echo = 70000\n", "bad value for 'services.udp_echo'"),
        ('shutdown_timeout = "soon"\n', "bad value for 'shutdown_timeout'"),
        (None, "not found"),
    ],
)
def test_bad_config_files_fail_in_one_line_for_run_and_check_config(
    command: str,
    text: str | None,
    expected: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """What the unit's ExecStartPre= (check-config) and ExecStart= (run --config) print."""
    path = tmp_path / "netstack.toml"
    if text is not None:
        path.write_text(text)
    argv = ["run", "--config", str(path)] if command == "run" else ["check-config", str(path)]
    assert main(argv) == 2  # before any device is touched: no root needed
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"netstack: {path}: ") or lines[0] == (
        f"netstack: config file {path}: not found"
    )
    assert expected in lines[0]
    assert captured.out == ""


def test_busy_poll_takes_microseconds_or_auto() -> None:
    # adaptive by default: it spins only after received turns whose recent spins paid (an
    # idle stack never spins); 0 turns it off
    assert build_config().busy_poll == "auto"
    assert build_config({"busy_poll": 0}).busy_poll == 0
    assert build_config({"busy_poll": 50}).busy_poll == 50
    assert build_config({"busy_poll": "50"}).busy_poll == 50
    assert build_config({"busy_poll": "Auto"}).busy_poll == "auto"
