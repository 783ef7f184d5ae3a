"""`[tcp] pmtu_discovery` and `plpmtud`: config-file keys reaching TcpConfig, and check-config
refusing bad values in one line (issue 11: the TcpConfig fields had no test as keys)."""

from __future__ import annotations

from pathlib import Path

import pytest

from netstack.cli import main
from netstack.config import ConfigError, build_config, load_toml
from netstack.proto.tcp.config import TcpConfig


def test_defaults_match_the_engine_defaults() -> None:
    tcp = build_config().tcp_config()
    assert tcp.pmtu_discovery is TcpConfig().pmtu_discovery is True
    assert tcp.plpmtud is TcpConfig().plpmtud is False


@pytest.mark.parametrize(("pmtu", "plpmtud"), [(False, True), (True, True), (False, False)])
def test_file_keys_reach_tcp_config(tmp_path: Path, pmtu: bool, plpmtud: bool) -> None:
    path = tmp_path / "n.toml"
    path.write_text(
        f"[tcp]\npmtu_discovery = {str(pmtu).lower()}\nplpmtud = {str(plpmtud).lower()}\n"
    )
    tcp = build_config(load_toml(path)).tcp_config()
    assert (tcp.pmtu_discovery, tcp.plpmtud) == (pmtu, plpmtud)


@pytest.mark.parametrize("key", ["tcp.pmtu_discovery", "tcp.plpmtud"])
def test_bad_values_name_the_key(key: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_config({key: "sometimes"})
    assert f"'{key}'" in str(err.value) and "\n" not in str(err.value)


def test_check_config_shows_and_validates_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.toml"
    good.write_text("[tcp]\npmtu_discovery = false\nplpmtud = true\n")
    assert main(["check-config", str(good)]) == 0
    out = capsys.readouterr().out
    assert "tcp.pmtu_discovery = False" in out and "tcp.plpmtud = True" in out

    bad = tmp_path / "bad.toml"
    bad.write_text('[tcp]\nplpmtud = "sometimes"\n')
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad value for 'tcp.plpmtud'" in err[0]
