"""Forward specs (--forward and [[forward]]) and the front's config checks, no I/O."""

from __future__ import annotations

import ipaddress
import textwrap
from pathlib import Path

import pytest

from netstack import cli
from netstack.config import ConfigError, build_config, load_toml
from netstack.front.spec import ForwardSpec, parse_forward_flag, parse_forwards


def test_forward_flag() -> None:
    spec = parse_forward_flag("tcp:80=127.0.0.1:8080")
    assert spec == ForwardSpec("tcp", 80, "127.0.0.1", 8080)
    assert spec.name == "tcp:80" and spec.target == ("127.0.0.1", 8080)
    assert spec.idle == 3600.0
    udp = parse_forward_flag("UDP:53=[::1]:5353")
    assert (udp.proto, udp.to_host, udp.to_port, udp.idle) == ("udp", "::1", 5353, 60.0)
    assert str(udp) == "udp:53=[::1]:5353"


@pytest.mark.parametrize(
    "text",
    [
        "tcp80=127.0.0.1:8080",
        "tcp:80",
        "sctp:80=127.0.0.1:80",
        "tcp:0=127.0.0.1:80",
        "tcp:70000=127.0.0.1:80",
        "tcp:80=localhost:8080",  # names are not resolved
        "tcp:80=127.0.0.1",
        "tcp:80=127.0.0.1:0",
        "tcp:x=127.0.0.1:80",
    ],
)
def test_forward_flag_errors(text: str) -> None:
    with pytest.raises(ValueError):
        parse_forward_flag(text)


def test_forward_tables_and_duplicates() -> None:
    specs = parse_forwards(
        [
            {"proto": "tcp", "listen": 80, "to": "127.0.0.1:8080", "max_connections": 5},
            {"proto": "udp", "listen": 80, "to": "127.0.0.1:8080", "idle_timeout": 5},
        ]
    )
    assert specs[0].max_connections == 5 and specs[1].idle == 5.0
    with pytest.raises(ValueError, match="twice"):
        parse_forwards(["tcp:80=127.0.0.1:1", "tcp:80=127.0.0.1:2"])
    with pytest.raises(ValueError, match="unknown"):
        parse_forwards([{"proto": "tcp", "listen": 80, "to": "127.0.0.1:1", "bogus": 1}])
    with pytest.raises(ValueError, match="needs"):
        parse_forwards([{"proto": "tcp", "listen": 80}])
    with pytest.raises(ValueError):
        parse_forwards([{"proto": "tcp", "listen": 80, "to": "127.0.0.1:1", "max_connections": 0}])


def test_config_rejects_forward_on_a_service_port() -> None:
    with pytest.raises(ConfigError, match="built-in service"):
        build_config({"forward": ["tcp:7=127.0.0.1:8080"]})
    config = build_config({"forward": ["tcp:7=127.0.0.1:8080"], "services.tcp_echo": False})
    assert config.forward[0].listen == 7


def test_socks_config_checks() -> None:
    config = build_config({"socks.listen": "127.0.0.1:1080"})
    assert config.socks_listen.port == 1080 and config.socks_allow is None
    with pytest.raises(ConfigError, match=r"needs socks\.username"):
        build_config({"socks.listen": "0.0.0.0:1080"})
    with pytest.raises(ConfigError, match="go together"):
        build_config({"socks.listen": "127.0.0.1:1080", "socks.username": "u"})
    ok = build_config(
        {
            "socks.listen": "0.0.0.0:1080",
            "socks.username": "u",
            "socks.password": "p",
            "socks.allow": ["198.51.100.0/24", "192.0.2.0/24"],
        }
    )
    assert ok.socks_allow == (
        ipaddress.IPv4Network("198.51.100.0/24"),
        ipaddress.IPv4Network("192.0.2.0/24"),
    )
    assert "socks.password = (set)" in ok.describe()
    with pytest.raises(ConfigError):
        build_config({"socks.allow": ["not a network"]})


def test_toml_tables_and_flags_add_up(tmp_path: Path) -> None:
    path = tmp_path / "n.toml"
    path.write_text(
        textwrap.dedent(
            """
            [[forward]]
            proto = "tcp"
            listen = 80
            to = "127.0.0.1:8080"

            [socks]
            listen = "127.0.0.1:1080"
            allow = ["192.0.2.0/24"]
            """
        )
    )
    assert len(build_config(load_toml(path)).forward) == 1
    args = cli._parser().parse_args(
        [
            "run",
            "--config",
            str(path),
            "--forward",
            "udp:53=127.0.0.1:53",
            "--socks",
            "127.0.0.1:1081",
        ]
    )
    config = cli._load(args)
    assert [s.name for s in config.forward] == ["tcp:80", "udp:53"]
    assert config.socks_listen.port == 1081
    bare = cli._load(cli._parser().parse_args(["run"]))
    assert bare.forward == () and bare.socks_listen is None
