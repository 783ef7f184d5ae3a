"""address6 / host_address6 / ipv6_secret: parsing, defaults, check-config errors."""

from __future__ import annotations

import ipaddress

import pytest

from netstack.config import ConfigError, build_config
from netstack.runtime import ipv6_host_config


def test_defaults() -> None:
    config = build_config({})
    assert config.address6 == "auto"
    assert config.host_address6 == ipaddress.IPv6Interface("2001:db8::1/64")
    assert config.ipv6_secret is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("AUTO", "auto"),
        ("none", None),
        ("2001:db8::2/64", ipaddress.IPv6Interface("2001:db8::2/64")),
    ],
)
def test_address6_values(value: str, expected) -> None:
    assert build_config({"address6": value}).address6 == expected


@pytest.mark.parametrize(
    ("layer", "key"),
    [
        ({"address6": "2001:db8::2"}, "address6"),  # no prefix length
        ({"address6": "ff02::1/64"}, "address6"),
        ({"address6": "192.0.2.2/24"}, "address6"),
        ({"host_address6": "2001:db8::x/64"}, "host_address6"),
        ({"ipv6_secret": "abcd"}, "ipv6_secret"),  # shorter than 16 bytes
        ({"address6": "2001:db8::1/64"}, "host_address6"),  # the same as the kernel side's
    ],
)
def test_bad_values_name_the_key(layer: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_config(layer)
    assert f"'{key}'" in str(err.value)


def test_secret_is_not_printed() -> None:
    config = build_config({"ipv6_secret": "00" * 16})
    assert config.ipv6_secret == bytes(16)
    assert "ipv6_secret = (set)" in config.describe()


def test_host_config_modes() -> None:
    secret = {"ipv6_secret": "11" * 16}
    assert ipv6_host_config(build_config({**secret, "address6": "none"}), 1500) is None
    assert ipv6_host_config(build_config(secret), 1000) is None  # below IPv6's 1280
    auto = ipv6_host_config(build_config(secret), 1500)
    assert auto.slaac and auto.static == () and auto.secret == bytes([0x11] * 16)
    static = ipv6_host_config(build_config({**secret, "address6": "2001:db8::7/64"}), 1500)
    assert not static.slaac
    assert static.static == ((ipaddress.IPv6Address("2001:db8::7").packed, 64),)
