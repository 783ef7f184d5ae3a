"""DHCP messages: our builder read by scapy, scapy's messages read by our parser, and fuzzing."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netstack.drops import Drop
from netstack.wire import dhcp
from netstack.wire.errors import Malformed
from tests.wire.reference import dotted, ip, macs, parse_or_malformed, u8, u16, u32

scapy_all = pytest.importorskip("scapy.all")
BOOTP, DHCP = scapy_all.BOOTP, scapy_all.DHCP

many = settings(max_examples=int(os.environ.get("NETSTACK_FUZZ_EXAMPLES", "400")), deadline=None)
MAC = bytes.fromhex("02aabbccdd01")

# scapy's names for the message types and options we use
SCAPY_TYPES = {
    dhcp.DISCOVER: "discover",
    dhcp.OFFER: "offer",
    dhcp.REQUEST: "request",
    dhcp.DECLINE: "decline",
    dhcp.ACK: "ack",
    dhcp.NAK: "nak",
    dhcp.RELEASE: "release",
    dhcp.INFORM: "inform",
}


def _scapy_options(pkt) -> dict[str, object]:
    opts = {}
    for item in pkt[DHCP].options:
        if isinstance(item, tuple):
            opts[item[0]] = item[1:] if len(item) > 2 else item[1]
    return opts


addresses = st.integers(1, 0xFFFFFFFE)
optional_u32 = st.none() | u32


@st.composite
def messages(draw: st.DrawFn) -> dhcp.DhcpMessage:
    return dhcp.DhcpMessage(
        op=draw(st.sampled_from([dhcp.OP_REQUEST, dhcp.OP_REPLY])),
        xid=draw(u32),
        chaddr=draw(macs),
        message_type=draw(st.sampled_from(sorted(dhcp.TYPE_NAMES))),
        hops=draw(u8),
        secs=draw(u16),
        flags=draw(st.sampled_from([0, dhcp.FLAG_BROADCAST])),
        ciaddr=draw(u32),
        yiaddr=draw(u32),
        siaddr=draw(u32),
        giaddr=draw(u32),
        server_id=draw(st.none() | addresses),
        requested_ip=draw(st.none() | addresses),
        lease_time=draw(optional_u32),
        renewal_time=draw(optional_u32),
        rebinding_time=draw(optional_u32),
        subnet_mask=draw(optional_u32),
        routers=tuple(draw(st.lists(addresses, max_size=3))),
        mtu=draw(st.none() | st.integers(68, 0xFFFF)),
        parameter_request_list=tuple(draw(st.lists(st.integers(1, 254), max_size=8))),
        client_id=draw(st.none() | st.binary(min_size=1, max_size=20)),
    )


@many
@given(messages())
def test_round_trip(msg: dhcp.DhcpMessage) -> None:
    raw = dhcp.build(msg)
    assert len(raw) >= dhcp.MIN_MESSAGE_LEN
    assert dhcp.parse(memoryview(raw)) == msg


@many
@given(messages())
def test_ours_read_by_scapy(msg: dhcp.DhcpMessage) -> None:
    pkt = BOOTP(dhcp.build(msg))
    assert pkt.op == msg.op and pkt.xid == msg.xid and pkt.flags == msg.flags
    assert bytes(pkt.chaddr)[:6] == msg.chaddr and pkt.hlen == 6
    for field in ("ciaddr", "yiaddr", "siaddr", "giaddr"):
        assert getattr(pkt, field) == dotted(getattr(msg, field))
    opts = _scapy_options(pkt)
    assert opts["message-type"] == msg.message_type
    expect = {
        "server_id": msg.server_id,
        "requested_addr": msg.requested_ip,
        "subnet_mask": msg.subnet_mask,
    }
    for name, value in expect.items():
        assert opts.get(name) == (None if value is None else dotted(value))
    for name, value in (
        ("lease_time", msg.lease_time),
        ("renewal_time", msg.renewal_time),
        ("rebinding_time", msg.rebinding_time),
        ("interface-mtu", msg.mtu),
    ):
        assert opts.get(name) == value
    routers = opts.get("router")
    if msg.routers:
        got = routers if isinstance(routers, tuple) else (routers,)
        assert tuple(ip(r) for r in got) == msg.routers
    else:
        assert routers is None
    if msg.parameter_request_list:
        prl = opts["param_req_list"]
        assert list(prl if isinstance(prl, list) else [prl]) == list(msg.parameter_request_list)
    if msg.client_id is not None:
        assert bytes(opts["client_id"]) == msg.client_id


def test_scapy_offer_read_by_us() -> None:
    pkt = BOOTP(
        op=2, xid=0x1234ABCD, chaddr=MAC + bytes(10), yiaddr="192.0.2.50", siaddr="192.0.2.1",
        flags=0x8000, secs=3,
    ) / DHCP(
        options=[
            ("message-type", "offer"),
            ("server_id", "192.0.2.1"),
            ("lease_time", 3600),
            ("renewal_time", 1800),
            ("rebinding_time", 3150),
            ("subnet_mask", "255.255.255.0"),
            ("router", "192.0.2.1", "192.0.2.254"),
            ("interface-mtu", 1400),
            ("domain", b"example.org"),  # skipped: not used by the client
            ("vendor_class_id", b"x" * 40),
            "pad",
            "end",
        ]
    )  # fmt: skip
    msg = dhcp.parse(memoryview(bytes(pkt)))
    assert msg == dhcp.DhcpMessage(
        op=2, xid=0x1234ABCD, chaddr=MAC, message_type=dhcp.OFFER, flags=0x8000, secs=3,
        yiaddr=ip("192.0.2.50"), siaddr=ip("192.0.2.1"), server_id=ip("192.0.2.1"),
        lease_time=3600, renewal_time=1800, rebinding_time=3150, subnet_mask=0xFFFFFF00,
        routers=(ip("192.0.2.1"), ip("192.0.2.254")), mtu=1400,
    )  # fmt: skip


@pytest.mark.parametrize("kind", sorted(SCAPY_TYPES))
def test_scapy_message_types(kind: int) -> None:
    pkt = BOOTP(op=2, xid=7, chaddr=MAC) / DHCP(
        options=[("message-type", SCAPY_TYPES[kind]), ("error_message", b"why"), "end"]
    )
    msg = dhcp.parse(bytes(pkt))
    assert msg.message_type == kind and msg.message == b"why" and msg.chaddr == MAC


def test_repeated_option_is_concatenated() -> None:
    """RFC 3396: a router list split over two option instances is one list."""
    pkt = BOOTP(op=2, xid=1, chaddr=MAC) / DHCP(
        options=[("message-type", "ack"), ("router", "192.0.2.1"), ("router", "192.0.2.2"), "end"]
    )
    assert dhcp.parse(bytes(pkt)).routers == (ip("192.0.2.1"), ip("192.0.2.2"))


def _valid() -> bytearray:
    return bytearray(dhcp.build(dhcp.DhcpMessage(op=2, xid=1, chaddr=MAC, message_type=2)))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda b: b[:239], Drop.DHCP_TRUNCATED),
        (lambda b: b[:236] + b"\x63\x82\x53\x64" + b[240:], Drop.DHCP_BAD_COOKIE),
        (lambda b: b"\x03" + b[1:], Drop.DHCP_BAD_HEADER),
        (lambda b: b[:2] + b"\x11" + b[3:], Drop.DHCP_BAD_HEADER),
        (lambda b: b[:240] + bytes((53, 2, 1, 1, 255)), Drop.DHCP_BAD_OPTION),  # type of 2 bytes
        (lambda b: b[:240] + bytes((51, 3, 0, 0, 1, 255)), Drop.DHCP_BAD_OPTION),  # lease 3 bytes
        (lambda b: b[:240] + bytes((3, 6)) + bytes(6) + b"\xff", Drop.DHCP_BAD_OPTION),  # router
        (lambda b: b[:240] + bytes((26, 2, 0, 67, 255)), Drop.DHCP_BAD_OPTION),  # MTU below 68
        (lambda b: b[:240] + bytes((12, 10, 1)), Drop.DHCP_BAD_OPTION),  # overruns the end
        (lambda b: b[:240] + bytes((12,)), Drop.DHCP_BAD_OPTION),  # length byte missing
        (lambda b: b[:240] + bytes((55, 0, 255)), Drop.DHCP_BAD_OPTION),  # empty request list
    ],
)
def test_malformed(damage, reason: Drop) -> None:
    result = parse_or_malformed(dhcp.parse, memoryview(bytes(damage(_valid()))))
    assert isinstance(result, Malformed) and result.reason is reason


def test_options_without_end_and_unknown_options_are_fine() -> None:
    raw = _valid()[:240] + bytes((53, 1, 5, 200, 3, 1, 2, 3, 0, 0))
    msg = dhcp.parse(bytes(raw))
    assert msg.message_type == dhcp.ACK


@many
@given(st.binary(max_size=400))
def test_random_bytes(data: bytes) -> None:
    assert isinstance(
        parse_or_malformed(dhcp.parse, memoryview(data)), (dhcp.DhcpMessage, Malformed)
    )


@many
@given(st.binary(max_size=120), st.integers(0, 300))
def test_random_options_behind_a_valid_header(options: bytes, cut: int) -> None:
    data = (bytes(_valid()[:240]) + options)[: 240 + cut]
    result = parse_or_malformed(dhcp.parse, memoryview(data))
    assert isinstance(result, (dhcp.DhcpMessage, Malformed))
    if isinstance(result, Malformed):
        assert result.reason.layer == "dhcp"
