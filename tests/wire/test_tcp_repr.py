"""TcpRepr (smoltcp's TcpRepr): parse and emit are inverses, emit agrees with scapy, and the
RFC 9293 3.10.7.1 reset reply."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP

from netstack.wire.tcp import ACK, FIN, PSH, RST, SYN, TcpOptions, TcpRepr
from tests.wire.reference import ip, u8, u16, u32

SRC = ip("192.0.2.1")
DST = ip("192.0.2.2")

reprs = st.builds(
    TcpRepr,
    src_port=u16,
    dst_port=u16,
    seq=u32,
    ack=u32,
    flags=u8,
    window=u16,
    options=st.none()
    | st.builds(
        TcpOptions,
        mss=st.none() | u16,
        window_scale=st.none() | st.integers(0, 14),
        sack_permitted=st.booleans(),
        timestamp=st.none() | st.tuples(u32, u32),
        sack_blocks=st.just(()) | st.lists(st.tuples(u32, u32), min_size=1, max_size=1).map(tuple),
    ).filter(lambda o: o != TcpOptions()),
    urgent=u16,
    payload=st.binary(max_size=64),
)


@given(reprs)
def test_parse_of_emit_is_the_value(value: TcpRepr) -> None:
    segment = value.emit(SRC, DST) + value.payload
    assert len(segment) == value.buffer_len()
    back = TcpRepr.parse(memoryview(segment), SRC, DST)
    assert back._replace(payload=bytes(back.payload)) == value


@given(reprs)
def test_emit_agrees_with_scapy(value: TcpRepr) -> None:
    segment = value.emit(SRC, DST) + value.payload
    packet = IP(src="192.0.2.1", dst="192.0.2.2", proto=6) / TCP(segment)
    theirs = packet[TCP]
    assert (theirs.sport, theirs.dport, theirs.seq, theirs.ack) == (
        value.src_port, value.dst_port, value.seq, value.ack
    )  # fmt: skip
    assert (int(theirs.flags), theirs.window, theirs.urgptr) == (
        value.flags, value.window, value.urgent
    )  # fmt: skip
    # scapy recomputes the checksum when told to: it must be ours
    copy = IP(src="192.0.2.1", dst="192.0.2.2") / TCP(segment)
    del copy[TCP].chksum
    assert bytes(copy[TCP])[16:18] == segment[16:18]
    assert bytes(theirs.payload) == value.payload


def test_reset_replies() -> None:
    """RFC 9293 3.10.7.1 (CLOSED): ACK -> <SEQ=SEG.ACK><RST>; else <SEQ=0><ACK=SEG.SEQ+
    SEG.LEN><RST,ACK>, SYN and FIN counting one each; a RST gets nothing."""
    assert TcpRepr.reset_for(5000, 80, 100, 7000, ACK | PSH, 10) == TcpRepr(
        80, 5000, 7000, 0, RST, 0
    )
    assert TcpRepr.reset_for(5000, 80, 100, 0, SYN, 0) == TcpRepr(80, 5000, 0, 101, RST | ACK, 0)
    assert TcpRepr.reset_for(5000, 80, 0xFFFFFFFF, 0, SYN | FIN, 3) == TcpRepr(
        80, 5000, 0, 4, RST | ACK, 0
    )
    assert TcpRepr.reset_for(5000, 80, 100, 7000, RST | ACK, 0) is None
