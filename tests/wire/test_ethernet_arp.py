"""Ethernet and ARP against scapy, both directions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from netstack.drops import Drop
from netstack.wire import arp, ethernet
from netstack.wire.errors import Malformed
from tests.wire.reference import dotted, ip, macs, payloads, u16, u32

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("02000000abcd")
ethertypes = st.integers(0x0600, 0xFFFF)  # below 0x0600 it is an 802.3 length


# -- Ethernet ------------------------------------------------------------------------------


@given(macs, macs, ethertypes, payloads)
def test_ethernet_parse_scapy_built(dst: bytes, src: bytes, ethertype: int, data: bytes) -> None:
    frame = bytes(Ether(dst=dst.hex(":"), src=src.hex(":"), type=ethertype) / Raw(data))
    header, payload = ethernet.parse(memoryview(frame))
    assert header == ethernet.EthernetHeader(dst, src, ethertype)
    assert isinstance(payload, memoryview)
    assert bytes(payload) == data


@given(macs, macs, ethertypes, payloads)
def test_ethernet_build_scapy_dissects(dst: bytes, src: bytes, ethertype: int, data: bytes) -> None:
    header = ethernet.build(dst, src, ethertype)
    assert len(header) == ethernet.HEADER_LEN
    pkt = Ether(header + data)
    assert (pkt.dst, pkt.src, pkt.type) == (dst.hex(":"), src.hex(":"), ethertype)


def test_ethernet_payload_is_a_view_not_a_copy() -> None:
    arena = bytearray(ethernet.build(MAC_A, MAC_B, 0x0800) + b"abcd")
    _, payload = ethernet.parse(memoryview(arena))
    arena[-1] = ord("Z")
    assert bytes(payload) == b"abcZ"


@pytest.mark.parametrize("size", [0, 1, 13])
def test_ethernet_truncated(size: int) -> None:
    with pytest.raises(Malformed) as info:
        ethernet.parse(memoryview(bytes(size)))
    assert info.value.reason is Drop.ETH_TRUNCATED


def test_ethernet_header_only() -> None:
    header, payload = ethernet.parse(memoryview(ethernet.build(MAC_A, MAC_B, 0x0806)))
    assert header.ethertype == ethernet.ETHERTYPE_ARP and len(payload) == 0


def test_mac_strings() -> None:
    assert ethernet.mac_to_str(MAC_B) == "02:00:00:00:ab:cd"
    assert ethernet.mac_from_str("02:00:00:00:AB:cd") == MAC_B
    assert ethernet.mac_from_str("2-0-0-0-ab-cd") == MAC_B
    for bad in [
        "",
        "02:00:00:00:ab",
        "02:00:00:00:ab:cd:ef",
        "02:00-00:00:ab:cd",
        "0g:0:0:0:0:0",
        "002:0:0:0:0:0",
        "02:00:00:00:ab:cd\n",
        "020000000001",
    ]:
        with pytest.raises(ValueError):
            ethernet.mac_from_str(bad)


@given(macs)
def test_mac_string_round_trip(mac: bytes) -> None:
    assert ethernet.mac_from_str(ethernet.mac_to_str(mac)) == mac


def test_is_multicast() -> None:
    assert ethernet.is_multicast(ethernet.BROADCAST)
    assert ethernet.is_multicast(bytes.fromhex("01005e000001"))
    assert ethernet.is_multicast(bytes.fromhex("333300000001"))
    assert not ethernet.is_multicast(MAC_A)
    assert not ethernet.is_multicast(bytes.fromhex("000000000000"))


# -- ARP -----------------------------------------------------------------------------------


@given(st.integers(1, 2), macs, u32, macs, u32)
def test_arp_parse_scapy_built(op: int, smac: bytes, sip: int, tmac: bytes, tip: int) -> None:
    frame = bytes(
        Ether(dst="ff:ff:ff:ff:ff:ff", src=smac.hex(":"))
        / ARP(op=op, hwsrc=smac.hex(":"), psrc=dotted(sip), hwdst=tmac.hex(":"), pdst=dotted(tip))
    )
    eth, payload = ethernet.parse(memoryview(frame))
    assert eth.ethertype == ethernet.ETHERTYPE_ARP
    assert arp.parse(payload) == arp.ArpPacket(op, smac, sip, tmac, tip)


@given(u16, macs, u32, macs, u32)
def test_arp_build_scapy_dissects(op: int, smac: bytes, sip: int, tmac: bytes, tip: int) -> None:
    data = arp.build(op, smac, sip, tmac, tip)
    assert len(data) == arp.HEADER_LEN
    pkt = ARP(data)
    assert (pkt.hwtype, pkt.ptype, pkt.hwlen, pkt.plen) == (1, 0x0800, 6, 4)
    assert (pkt.op, pkt.hwsrc, pkt.psrc) == (op, smac.hex(":"), dotted(sip))
    assert (pkt.hwdst, pkt.pdst) == (tmac.hex(":"), dotted(tip))
    assert arp.parse(memoryview(data)) == (op, smac, sip, tmac, tip)


def test_arp_padded_frame() -> None:
    # What a NIC delivers: the 28-byte ARP packet padded to the 60-byte Ethernet minimum.
    frame = ethernet.build(ethernet.BROADCAST, MAC_A, ethernet.ETHERTYPE_ARP) + arp.build(
        arp.OP_REQUEST, MAC_A, ip("192.0.2.1"), bytes(6), ip("192.0.2.2")
    )
    frame += bytes(60 - len(frame))
    _, payload = ethernet.parse(memoryview(frame))
    packet = arp.parse(payload)
    assert packet.op == arp.OP_REQUEST and packet.target_ip == ip("192.0.2.2")


@pytest.mark.parametrize("size", [0, 8, 27])
def test_arp_truncated(size: int) -> None:
    data = arp.build(1, MAC_A, 1, MAC_B, 2)[:size]
    with pytest.raises(Malformed) as info:
        arp.parse(memoryview(data))
    assert info.value.reason is Drop.ARP_TRUNCATED


@pytest.mark.parametrize(
    "fields",
    [
        {"hwtype": 6},  # IEEE 802
        {"ptype": 0x86DD},
        {"hwlen": 8},
        {"plen": 16},
    ],
)
def test_arp_unsupported(fields: dict[str, int]) -> None:
    data = bytes(ARP(op=1, hwsrc="02:00:00:00:00:01", psrc="192.0.2.1", **fields))[:28]
    data += bytes(28 - len(data))
    with pytest.raises(Malformed) as info:
        arp.parse(memoryview(data))
    assert info.value.reason is Drop.ARP_UNSUPPORTED
