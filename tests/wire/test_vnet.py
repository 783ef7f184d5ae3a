"""The virtio-net header (wire/vnet.py): layout against the kernel's struct (compiled by cffi
from <linux/virtio_net.h>), parse/build, metadata ints, partial checksums, and the software
GSO cut checked segment by segment with scapy."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from netstack._ffi import ffi
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from netstack.drops import Drop
from netstack.wire import ipv4 as wipv4
from netstack.wire import tcp as wtcp
from netstack.wire import vnet
from netstack.wire.errors import Malformed
from tests.wire.reference import ip

FIELDS = ("flags", "gso_type", "hdr_len", "gso_size", "csum_start", "csum_offset")
SRC, DST = ip("192.0.2.2"), ip("192.0.2.1")


def test_layout_is_the_kernels() -> None:
    """cffi compiled `struct virtio_net_hdr` from the kernel header with `...;`: its real
    offsets and size are what our struct format assumes."""
    assert ffi.sizeof("struct virtio_net_hdr") == vnet.HEADER_LEN == 10
    offsets = [ffi.offsetof("struct virtio_net_hdr", name) for name in FIELDS]
    assert offsets == [
        vnet.FLAGS_OFFSET, vnet.GSO_TYPE_OFFSET, vnet.HDR_LEN_OFFSET, vnet.GSO_SIZE_OFFSET,
        vnet.CSUM_START_OFFSET, vnet.CSUM_OFFSET_OFFSET,
    ]  # fmt: skip


def test_build_matches_a_kernel_struct_filled_field_by_field() -> None:
    hdr = ffi.new("struct virtio_net_hdr *")
    values = (1, 1, 66, 1448, 34, 16)
    for name, value in zip(FIELDS, values, strict=True):
        setattr(hdr, name, value)
    assert bytes(ffi.buffer(hdr)) == vnet.build(*values) == vnet.VnetHeader(*values).emit()
    assert vnet.tcp4_gso(34, 32, 1448) == vnet.build(1, 1, 66, 1448, 34, 16)


@given(st.tuples(*(st.integers(0, 255),) * 2, *(st.integers(0, 0xFFFF),) * 4))
def test_parse_build_and_metadata_round_trip(values: tuple[int, ...]) -> None:
    raw = vnet.build(*values)
    header = vnet.parse(memoryview(raw + b"frame"))
    assert tuple(header) == values
    meta = vnet.meta_of(raw)
    assert vnet.meta_header(meta) == header
    assert vnet.meta_trusted(meta) == bool(values[0] & (vnet.F_NEEDS_CSUM | vnet.F_DATA_VALID))
    assert vnet.meta_gso_size(meta) == values[3]
    assert vnet.meta_gso_type(meta) == values[1] & ~vnet.GSO_ECN


def test_plain_header_is_zero_metadata() -> None:
    assert vnet.meta_of(vnet.PLAIN) == 0


def test_short_header_is_a_drop() -> None:
    with pytest.raises(Malformed) as err:
        vnet.parse(b"\0" * 9)
    assert err.value.reason is Drop.LINK_VNET_TRUNCATED


def super_frame(payload: bytes, gso_size: int, flags: int = wtcp.ACK | wtcp.PSH) -> bytes:
    """An Ethernet/IPv4/TCP super-frame as the stack sends it: DF, total length the whole,
    the TCP checksum field holding the pseudo-header sum."""
    ts = wtcp.TcpOptions(timestamp=(111, 222))
    tcp = bytearray(wtcp.build(SRC, DST, 80, 40000, 1000, 2000, flags, 512, b"", options=ts))
    tcp[16:18] = vnet.pseudo_sum(SRC, DST, len(tcp) + len(payload))
    iph = wipv4.build(SRC, DST, 6, len(tcp) + len(payload), ident=7, dont_fragment=True)
    eth = bytes.fromhex("02000000000102000000000208 00".replace(" ", ""))
    return eth + iph + bytes(tcp) + payload


@pytest.mark.parametrize(("size", "gso"), [(65160, 1448), (3000, 1448), (1448 * 3, 1448), (10, 8)])
def test_software_segments_are_valid_wire_segments(size: int, gso: int) -> None:
    payload = bytes(i * 7 & 0xFF for i in range(size))
    frame = super_frame(payload, gso)
    header = vnet.VnetHeader(vnet.F_NEEDS_CSUM, vnet.GSO_TCPV4, 66, gso, 34, 16)
    segments = vnet.software_segments(frame, header)
    assert len(segments) == vnet.segments(size, gso) == -(-size // gso)
    got = b""
    for i, raw in enumerate(segments):
        pkt = Ether(raw)
        ipl, tcpl = pkt[IP], pkt[TCP]
        fresh = Ether(bytes(pkt))  # scapy recomputes both checksums: ours must match
        del fresh[IP].chksum, fresh[TCP].chksum
        fresh = Ether(bytes(fresh))
        assert (ipl.chksum, tcpl.chksum) == (fresh[IP].chksum, fresh[TCP].chksum)
        assert ipl.id == 7 + i and ipl.flags == "DF" and ipl.len == len(raw) - 14
        assert tcpl.seq == 1000 + i * gso
        last = i == len(segments) - 1
        assert ("P" in str(tcpl.flags)) == last and "A" in str(tcpl.flags)
        assert dict(tcpl.options)["Timestamp"] == (111, 222)
        got += bytes(pkt[Raw].load) if pkt.haslayer(Raw) else b""
        assert len(bytes(tcpl.payload)) <= gso
    assert got == payload


def test_fill_checksum_completes_a_partial_one() -> None:
    payload = b"abc" * 501
    frame = bytearray(super_frame(payload, 1448))
    header = vnet.VnetHeader(vnet.F_NEEDS_CSUM, vnet.GSO_TCPV4, 66, 1448, 34, 16)
    with pytest.raises(Malformed):
        wtcp.parse(memoryview(bytes(frame[34:])), SRC, DST)  # partial: not yet valid
    vnet.fill_checksum(frame, header)
    _, data = wtcp.parse(memoryview(bytes(frame[34:])), SRC, DST)
    assert bytes(data) == payload


def test_marks_survive_copies_and_vanish_from_joins() -> None:
    header = vnet.VnetHeader(vnet.F_NEEDS_CSUM, vnet.GSO_TCPV4, 66, 1448, 34, 16)
    mark = vnet.mark(header)
    assert mark is vnet.mark(header) and mark.header == header.emit() and len(mark) == 0
    frame = (b"eth", mark, memoryview(b"ip"), b"tcp")
    assert b"".join(frame) == b"ethiptcp"
    owned = vnet.own_frame(frame)
    assert owned == (b"eth", mark, b"iptcp") and owned[1] is mark
    assert vnet.own_frame((mark, b"ip")) == (mark, b"ip")
    assert vnet.own_frame((b"a", b"b")) == (b"ab",)
    assert vnet.find_mark(frame) is mark and vnet.find_mark((b"x",)) is None
