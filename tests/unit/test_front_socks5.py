"""SOCKS5 message parsing and encoding (RFC 1928, RFC 1929), no I/O."""

from __future__ import annotations

import pytest

from netstack.front import socks5 as s5


def test_greeting_incremental() -> None:
    msg = bytes([5, 2, 0, 2])
    for cut in range(len(msg)):
        assert s5.parse_greeting(msg[:cut]) is None
    greeting, used = s5.parse_greeting(msg + b"extra")
    assert greeting.methods == b"\x00\x02" and used == 4
    assert s5.choose_method(greeting, need_auth=False) == s5.METHOD_NO_AUTH
    assert s5.choose_method(greeting, need_auth=True) == s5.METHOD_USERPASS
    assert s5.choose_method(s5.Greeting(b"\x00"), need_auth=True) == s5.METHOD_NONE_ACCEPTABLE
    assert s5.encode_method(2) == b"\x05\x02"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x04\x01\x00", "bad_version"),
        (b"GET / HTTP/1.1", "bad_version"),
        (b"\x05\x00", "no_acceptable_method"),
    ],
)
def test_greeting_errors(data: bytes, reason: str) -> None:
    with pytest.raises(s5.SocksError) as err:
        s5.parse_greeting(data)
    assert err.value.reason == reason and err.value.reply is None


def test_userpass() -> None:
    msg = b"\x01\x04user\x06secret"
    for cut in range(len(msg)):
        assert s5.parse_userpass(msg[:cut]) is None
    creds, used = s5.parse_userpass(msg)
    assert (creds.username, creds.password, used) == (b"user", b"secret", len(msg))
    assert s5.encode_auth_status(True) == b"\x01\x00"
    assert s5.encode_auth_status(False) == b"\x01\x01"
    with pytest.raises(s5.SocksError):
        s5.parse_userpass(b"\x05\x04user\x06secret")
    with pytest.raises(s5.SocksError):
        s5.parse_userpass(b"\x01\x00\x00")


@pytest.mark.parametrize(
    ("msg", "command", "atyp", "host", "port"),
    [
        (b"\x05\x01\x00\x01\xc0\x00\x02\x01\x1f\x40", 1, 1, "192.0.2.1", 8000),
        (b"\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00", 3, 1, "0.0.0.0", 0),
        (b"\x05\x02\x00\x01\xc0\x00\x02\x01\x00\x15", 2, 1, "192.0.2.1", 21),  # BIND
        (b"\x05\x01\x00\x03\x0bexample.com\x00\x50", 1, 3, "example.com", 80),
        (b"\x05\x01\x00\x04" + bytes(15) + b"\x01\x00\x16", 1, 4, "::1", 22),
    ],
)
def test_request(msg: bytes, command: int, atyp: int, host: str, port: int) -> None:
    for cut in range(len(msg)):
        assert s5.parse_request(msg[:cut]) is None
    request, used = s5.parse_request(msg + b"early data")
    assert used == len(msg)
    assert request.command == command
    assert request.address == s5.Address(atyp, host, port)


@pytest.mark.parametrize(
    ("msg", "reason", "reply"),
    [
        (b"\x04\x01\x00\x01\xc0\x00\x02\x01\x1f\x40", "bad_version", s5.REP_GENERAL_FAILURE),
        (b"\x05\x01\x00\x05\xc0\x00\x02\x01\x1f\x40", "bad_address_type", 8),
        (b"\x05\x01\x00\x00", "bad_address_type", 8),
        (b"\x05\x09\x00\x01\xc0\x00\x02\x01\x1f\x40", "bad_command", 7),
        (b"\x05\x01\x00\x03\x00\x00\x50", "bad_address_type", 8),  # empty name
    ],
)
def test_request_errors(msg: bytes, reason: str, reply: int) -> None:
    with pytest.raises(s5.SocksError) as err:
        s5.parse_request(msg)
    assert (err.value.reason, err.value.reply) == (reason, reply)


def test_reply_encoding() -> None:
    assert s5.encode_reply(0, ("192.0.2.2", 49152)) == b"\x05\x00\x00\x01\xc0\x00\x02\x02\xc0\x00"
    assert s5.encode_reply(2) == b"\x05\x02\x00\x01\x00\x00\x00\x00\x00\x00"
    assert s5.encode_reply(0, ("::1", 1)) == b"\x05\x00\x00\x04" + bytes(15) + b"\x01\x00\x01"


def test_udp_header_roundtrip() -> None:
    datagram = s5.encode_udp(("192.0.2.1", 7), b"payload")
    header, payload = s5.parse_udp(datagram)
    assert header.frag == 0 and header.address == s5.Address(1, "192.0.2.1", 7)
    assert bytes(payload) == b"payload"
    fragged = b"\x00\x00\x01" + datagram[3:]
    assert s5.parse_udp(fragged)[0].frag == 1
    for cut in (0, 3, 6, 9):
        with pytest.raises(s5.SocksError):
            s5.parse_udp(datagram[:cut])
    with pytest.raises(s5.SocksError):
        s5.parse_udp(b"\x00\x00\x00\x07" + bytes(8))
