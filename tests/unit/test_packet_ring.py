"""The TPACKET_V3 ring's shape (netstack/io/packet.py ring_geometry), without a socket.

The walk itself needs the kernel to fill blocks: tests/integration/test_ffi_links.py."""

from __future__ import annotations

import pytest

from netstack.io.packet import RING_BYTES, RING_OVERHEAD, ring_geometry
from netstack.wire import vnet as wvnet


@pytest.mark.parametrize(
    ("mtu", "vnet", "block"),
    [(1500, False, 4096), (576, False, 4096), (4000, False, 8192), (9000, False, 16384),
     (1500, True, 128 << 10), (9000, True, 128 << 10)],
)  # fmt: skip
def test_blocks_are_the_smallest_page_doubling_that_holds_the_largest_frame(
    mtu: int, vnet: bool, block: int
) -> None:
    g = ring_geometry(mtu, vnet)
    assert g.block_size == block
    largest = (65536 + wvnet.HEADER_LEN if vnet else max(mtu, 1500) + 14) + RING_OVERHEAD
    assert g.block_size >= largest > g.block_size // 2 or g.block_size == 4096
    assert g.size == RING_BYTES  # the same memory whatever the block size
    # what the kernel checks in packet_set_ring
    assert g.block_size % 4096 == 0 and g.block_size % g.frame_size == 0
    assert g.frame_size % 16 == 0  # TPACKET_ALIGNMENT
