"""The closed set of reasons a frame can be dropped for.

Every drop in the stack names exactly one of these. The set is closed on purpose: it becomes the
`reason` label of `netstack_drops_total{layer, reason}`, and Prometheus labels must stay bounded.
Add a member when a new decision branch drops input; never build a reason from packet data.
"""

from __future__ import annotations

import enum


class Drop(enum.Enum):
    """(layer, reason) of one dropped frame, packet, datagram or segment."""

    # link: frames the Link could not read or write
    LINK_RX_OVERSIZE = ("link", "oversize")
    LINK_TX_ERROR = ("link", "tx_error")
    LINK_TX_QUEUE_FULL = ("link", "tx_queue_full")
    LINK_FAULT_INJECTED = ("link", "fault_injected")  # --fault: a loss we were told to cause
    LINK_FAULT_QUEUE_FULL = ("link", "fault_queue_full")  # --fault: too many frames held
    LINK_VNET_TRUNCATED = ("link", "vnet_truncated")  # shorter than its virtio-net header
    LINK_GSO_UNSUPPORTED = ("link", "gso_unsupported")  # a super-frame of a kind we cannot cut
    LINK_RX_KERNEL_DROPPED = ("link", "kernel_dropped")  # AF_PACKET: queue or ring was full

    # ethernet
    ETH_TRUNCATED = ("ethernet", "truncated")
    ETH_NOT_FOR_US = ("ethernet", "not_for_us")
    ETH_UNKNOWN_ETHERTYPE = ("ethernet", "unknown_ethertype")
    ETH_BAD_SOURCE = ("ethernet", "bad_source")

    # arp
    ARP_TRUNCATED = ("arp", "truncated")
    ARP_UNSUPPORTED = ("arp", "unsupported")  # not Ethernet/IPv4, or bad hlen/plen
    ARP_BAD_OPCODE = ("arp", "bad_opcode")
    ARP_NOT_FOR_US = ("arp", "not_for_us")
    ARP_BAD_SENDER = ("arp", "bad_sender")  # broadcast/multicast MAC, or 0.0.0.0 / our own IP
    ARP_QUEUE_FULL = ("arp", "queue_full")  # waiting-for-resolution queue full
    ARP_RESOLUTION_FAILED = ("arp", "resolution_failed")

    # ipv4
    IPV4_TRUNCATED = ("ipv4", "truncated")
    IPV4_BAD_VERSION = ("ipv4", "bad_version")
    IPV4_BAD_HEADER_LENGTH = ("ipv4", "bad_header_length")
    IPV4_BAD_TOTAL_LENGTH = ("ipv4", "bad_total_length")
    IPV4_BAD_CHECKSUM = ("ipv4", "bad_checksum")
    IPV4_BAD_SOURCE = ("ipv4", "bad_source")  # broadcast, multicast or loopback source
    IPV4_NOT_FOR_US = ("ipv4", "not_for_us")
    IPV4_UNKNOWN_PROTOCOL = ("ipv4", "unknown_protocol")
    IPV4_BAD_FRAGMENT = ("ipv4", "bad_fragment")  # beyond 65535, or non-final not multiple of 8
    IPV4_FRAGMENT_OVERLAP = ("ipv4", "fragment_overlap")
    IPV4_REASSEMBLY_TIMEOUT = ("ipv4", "reassembly_timeout")
    IPV4_REASSEMBLY_OVERFLOW = ("ipv4", "reassembly_overflow")  # byte or datagram limit hit
    IPV4_NO_ROUTE = ("ipv4", "no_route")
    IPV4_FRAGMENTATION_NEEDED = ("ipv4", "fragmentation_needed")  # DF set and too big
    IPV4_TOO_BIG = ("ipv4", "too_big")  # local payload over 65515 bytes: no datagram fits

    # icmp
    ICMP_TRUNCATED = ("icmp", "truncated")
    ICMP_BAD_CHECKSUM = ("icmp", "bad_checksum")
    ICMP_UNSUPPORTED_TYPE = ("icmp", "unsupported_type")
    ICMP_RATE_LIMITED = ("icmp", "rate_limited")  # an error we chose not to send
    ICMP_BROADCAST_ECHO = ("icmp", "broadcast_echo")  # echo to broadcast ignored

    # udp
    UDP_TRUNCATED = ("udp", "truncated")
    UDP_BAD_LENGTH = ("udp", "bad_length")
    UDP_BAD_CHECKSUM = ("udp", "bad_checksum")
    UDP_NO_PORT = ("udp", "no_port")
    UDP_RECEIVE_QUEUE_FULL = ("udp", "receive_queue_full")

    # tcp: malformed
    TCP_TRUNCATED = ("tcp", "truncated")
    TCP_BAD_HEADER_LENGTH = ("tcp", "bad_header_length")
    TCP_BAD_CHECKSUM = ("tcp", "bad_checksum")
    TCP_BAD_OPTIONS = ("tcp", "bad_options")
    TCP_NOT_UNICAST = ("tcp", "not_unicast")  # to a broadcast address (RFC 1122 4.2.3.10)
    # tcp: no connection (answered with a RST unless the segment was one)
    TCP_NO_LISTENER = ("tcp", "no_listener")
    TCP_CLOSED = ("tcp", "closed")
    # tcp: listeners
    TCP_LISTEN_RST = ("tcp", "listen_rst")
    TCP_LISTEN_ACK = ("tcp", "listen_ack")  # an ACK that is no valid SYN cookie: RST sent
    TCP_LISTEN_NO_SYN = ("tcp", "listen_no_syn")
    TCP_SYN_QUEUE_FULL = ("tcp", "syn_queue_full")  # and SYN cookies off
    TCP_ACCEPT_QUEUE_FULL = ("tcp", "accept_queue_full")
    # tcp: segment checks (RFC 9293 3.10.7.4, RFC 7323, RFC 5961)
    TCP_PAWS = ("tcp", "paws")  # timestamp older than TS.Recent
    TCP_OUT_OF_WINDOW = ("tcp", "out_of_window")  # unacceptable sequence number: ACK sent
    TCP_RST_OUT_OF_WINDOW = ("tcp", "rst_out_of_window")
    TCP_RST_CHALLENGED = ("tcp", "rst_challenged")  # in window, not RCV.NXT: challenge ACK
    TCP_SYN_CHALLENGED = ("tcp", "syn_challenged")  # SYN in a synchronized state
    TCP_SYN_RETRANSMIT = ("tcp", "syn_retransmit")  # the peer's SYN again: SYN-ACK resent
    TCP_NO_SYN = ("tcp", "no_syn")  # SYN_SENT: neither SYN nor RST
    TCP_NO_ACK = ("tcp", "no_ack")  # synchronized state: ACK flag missing
    TCP_BAD_ACK = ("tcp", "bad_ack")  # not acknowledging our SYN: RST sent
    TCP_ACK_UNSENT = ("tcp", "ack_unsent")  # acknowledges data never sent
    TCP_ACK_TOO_OLD = ("tcp", "ack_too_old")  # below SND.UNA - MAX.SND.WND
    # tcp: text
    TCP_ZERO_WINDOW = ("tcp", "zero_window")  # text with no room for it
    TCP_OOO_QUEUE_FULL = ("tcp", "ooo_queue_full")
    TCP_DATA_AFTER_FIN = ("tcp", "data_after_fin")
    TCP_DATA_AFTER_CLOSE = ("tcp", "data_after_close")  # the application closed: RST sent
    # tcp: ICMP errors about our segments
    TCP_ICMP_NO_CONNECTION = ("tcp", "icmp_no_connection")
    TCP_ICMP_OUT_OF_WINDOW = ("tcp", "icmp_out_of_window")  # RFC 5927 sequence check
    TCP_INTERNAL_ERROR = ("tcp", "internal_error")  # a bug: logged, the connection reset

    # ipv4 while the host has no address yet (DHCP): everything but the DHCP client's datagrams
    IPV4_NO_ADDRESS = ("ipv4", "no_address")
    # dhcp (RFC 2131 client)
    DHCP_TRUNCATED = ("dhcp", "truncated")  # shorter than the 240-byte fixed part
    DHCP_BAD_COOKIE = ("dhcp", "bad_cookie")  # not the 99.130.83.99 magic cookie
    DHCP_BAD_HEADER = ("dhcp", "bad_header")  # op not 1/2, or hlen over 16
    DHCP_BAD_OPTION = ("dhcp", "bad_option")  # overruns the message, or a bad length/value
    DHCP_NOT_FOR_US = ("dhcp", "not_for_us")  # not a reply, other xid or client hardware address
    DHCP_UNEXPECTED = ("dhcp", "unexpected")  # a message type the current state does not take
    DHCP_BAD_LEASE = ("dhcp", "bad_lease")  # unusable offer/ack: address, server id, lease time
    # udp: a "fragmentation needed" quoting a datagram from a port no socket holds (RFC 1191)
    UDP_ICMP_NO_SOCKET = ("udp", "icmp_no_socket")

    # ipv6 (RFC 8200)
    IPV6_TRUNCATED = ("ipv6", "truncated")  # shorter than 40 bytes or its payload length
    IPV6_BAD_VERSION = ("ipv6", "bad_version")
    IPV6_BAD_LENGTH = ("ipv6", "bad_length")  # payload length 0 (jumbograms are not taken)
    IPV6_BAD_SOURCE = ("ipv6", "bad_source")  # multicast, loopback or our own address
    IPV6_NOT_FOR_US = ("ipv6", "not_for_us")  # neither our address nor a group we joined
    IPV6_TENTATIVE = ("ipv6", "tentative")  # to an address still under DAD (RFC 4862 5.4)
    IPV6_UNKNOWN_PROTOCOL = ("ipv6", "unknown_protocol")  # unknown next header
    IPV6_BAD_EXTENSION = ("ipv6", "bad_extension")  # an extension header or option overruns
    IPV6_CHAIN_TOO_LONG = ("ipv6", "chain_too_long")  # more extension headers than we walk
    IPV6_HOP_BY_HOP_NOT_FIRST = ("ipv6", "hop_by_hop_not_first")
    IPV6_UNKNOWN_OPTION = ("ipv6", "unknown_option")  # its high bits say discard
    IPV6_ROUTING_TYPE0 = ("ipv6", "routing_type0")  # RFC 5095
    IPV6_ROUTING_UNSUPPORTED = ("ipv6", "routing_unsupported")  # segments left: we don't forward
    IPV6_NO_NEXT_HEADER = ("ipv6", "no_next_header")  # next header 59: nothing to deliver
    IPV6_BAD_FRAGMENT = ("ipv6", "bad_fragment")
    IPV6_FRAGMENT_OVERLAP = ("ipv6", "fragment_overlap")  # RFC 5722: the whole datagram goes
    IPV6_FRAGMENT_CHAIN_INCOMPLETE = ("ipv6", "fragment_chain_incomplete")  # RFC 7112
    IPV6_REASSEMBLY_TIMEOUT = ("ipv6", "reassembly_timeout")
    IPV6_REASSEMBLY_OVERFLOW = ("ipv6", "reassembly_overflow")
    IPV6_NO_ROUTE = ("ipv6", "no_route")
    IPV6_NO_SOURCE = ("ipv6", "no_source")  # no usable source address yet
    IPV6_TOO_BIG = ("ipv6", "too_big")  # local payload over 65535 bytes
    # icmpv6 (RFC 4443)
    ICMPV6_TRUNCATED = ("icmpv6", "truncated")
    ICMPV6_BAD_CHECKSUM = ("icmpv6", "bad_checksum")
    ICMPV6_UNSUPPORTED_TYPE = ("icmpv6", "unsupported_type")
    ICMPV6_RATE_LIMITED = ("icmpv6", "rate_limited")
    ICMPV6_BAD_ERROR = ("icmpv6", "bad_error")  # quotes nothing of ours, or a PTB under 1280
    # neighbor discovery (RFC 4861, RFC 4862) and MLD (RFC 3810)
    ND_BAD_HOP_LIMIT = ("nd", "bad_hop_limit")  # not 255: not from the link
    ND_BAD_CODE = ("nd", "bad_code")
    ND_TRUNCATED = ("nd", "truncated")
    ND_BAD_OPTION = ("nd", "bad_option")  # length 0, overrun, or not allowed here
    ND_BAD_TARGET = ("nd", "bad_target")  # multicast target
    ND_BAD_SOURCE = ("nd", "bad_source")  # RA not from link-local, DAD NS not to solicited-node
    ND_NOT_FOR_US = ("nd", "not_for_us")  # NS for an address we don't own
    ND_REDIRECT_IGNORED = ("nd", "redirect_ignored")  # redirects are not honoured
    ND_NOT_ROUTER = ("nd", "not_router")  # RS to a host (RFC 4861 6.2.6)
    ND_QUEUE_FULL = ("nd", "queue_full")
    ND_RESOLUTION_FAILED = ("nd", "resolution_failed")
    ND_ROUTER_LIST_FULL = ("nd", "router_list_full")
    ND_PREFIX_LIST_FULL = ("nd", "prefix_list_full")
    ND_BAD_PREFIX = ("nd", "bad_prefix")  # RFC 4862 5.5.3 a)-c): ignored prefix information
    MLD_IGNORED = ("mld", "ignored")  # other hosts' reports, or queries (we report unsolicited)

    @property
    def layer(self) -> str:
        return self.value[0]

    @property
    def reason(self) -> str:
        return self.value[1]
