"""cffi API-mode builder for netstack._ffi: the batched I/O and checksum helpers in C.

setup.py names `ffibuilder` via cffi_modules; `python ffi/build_ffi.py` builds in place too.
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

_HERE = Path(__file__).resolve().parent
_SOURCE = (_HERE / "netstack_ffi.c").read_text()

CDEF = """
struct iovec { void *iov_base; size_t iov_len; };

#define EPOLLIN ...
#define EPOLLOUT ...
#define EPOLLERR ...
#define EPOLLHUP ...
#define EPOLL_CTL_ADD ...
#define EPOLL_CTL_MOD ...
#define EPOLL_CTL_DEL ...

#define IFF_TAP ...
#define IFF_TUN ...
#define IFF_NO_PI ...
#define IFF_VNET_HDR ...
#define IFF_MULTI_QUEUE ...

#define TUN_F_CSUM ...
#define TUN_F_TSO4 ...
#define TUN_F_TSO6 ...
#define TUN_F_TSO_ECN ...
#define TUN_F_USO4 ...
#define TUN_F_USO6 ...
#define PACKET_VNET_HDR ...
#define PACKET_AUXDATA ...
#define PACKET_QDISC_BYPASS ...

int ns_tap_open(const char *name, int flags, char *name_out);
/* The kernel's layout, checked by cffi at build time (tests compare netstack.wire.vnet). */
struct virtio_net_hdr {
    uint8_t flags;
    uint8_t gso_type;
    uint16_t hdr_len;
    uint16_t gso_size;
    uint16_t csum_start;
    uint16_t csum_offset;
    ...;
};

int ns_tap_set_vnet_hdr_sz(int fd, int size);
int ns_tap_set_offload(int fd, unsigned int features);
int ns_packet_set_option(int fd, int option, int value);
int ns_socket_set_rcvbuf(int fd, int bytes);
int ns_packet_drops(int fd);
int ns_if_hwaddr(const char *name, uint8_t *mac_out);
int ns_if_mtu(const char *name);
int ns_packet_open(const char *name);
int ns_epoll_create(void);
int ns_epoll_ctl(int epfd, int op, int fd, uint32_t events);
int ns_epoll_wait(int epfd, int *fds_out, uint32_t *events_out, int max, int timeout_ms);
int ns_read_batch(int fd, uint8_t *arena, size_t slot_size, int max_frames, uint32_t *lens_out);
int ns_write_batch(int fd, const struct iovec *iov, const int *iov_counts, int n_frames);
int ns_recv_batch(int fd, uint8_t *arena, size_t slot_size, int max_frames, uint32_t *lens_out);
int ns_recv_batch_aux(int fd, uint8_t *arena, size_t slot_size, int max_frames,
                      uint32_t *lens_out, uint64_t *completed, uint32_t mtu);
int ns_send_batch(int fd, const struct iovec *iov, const int *iov_counts, int n_frames);
uint32_t ns_csum_partial(const uint8_t *buf, size_t len, uint32_t sum);
uint16_t ns_csum_fold(uint32_t sum);
int ns_csum_complete(uint8_t *frame, size_t len, size_t start, size_t offset);
uint32_t ns_rx_fast(const uint8_t *frame, size_t len, const char *mac, uint32_t addr,
                    uint32_t bcast);
uint32_t ns_rx_fast6(const uint8_t *frame, size_t len, const char *mac);
int ns_vnet_rx_plain(uint8_t *arena, size_t slot_size, size_t hlen, const uint32_t *lens, int n);
int ns_vnet_rx_plain_at(uint8_t *base, const uint32_t *offs, const uint32_t *lens, int n,
                        size_t hlen);
struct ns_ring {
    uint8_t *base;
    uint64_t size;
    uint32_t block_size;
    uint32_t block_nr;
    uint32_t cur;
    uint32_t pkt;
    uint32_t next_off;
    uint32_t release;
    uint32_t hlen;
    uint32_t truncated;
    uint64_t blocks;
    uint64_t completed;
    uint32_t mtu;
};
int ns_ring_open(int fd, struct ns_ring *ring, uint32_t block_size, uint32_t block_nr,
                 uint32_t frame_size, uint32_t tov_ms, uint32_t hlen);
void ns_ring_close(struct ns_ring *ring);
int ns_ring_recv(struct ns_ring *ring, int max_frames, uint32_t *offs_out, uint32_t *lens_out);
uint32_t ns_rx_fast_v(const uint8_t *frame, size_t len, const char *mac, uint32_t addr,
                      uint32_t bcast, int l4_valid);
int ns_vnet_rx_plain_v(uint8_t *arena, size_t slot_size, size_t hlen, const uint32_t *lens,
                       int n, uint8_t *verified);
int ns_gso_cut(const uint8_t *hdr, size_t hlen, const uint8_t *payload, size_t plen, size_t mss,
               uint8_t *hdrs_out, int max_pieces);
int ns_gso_write(int fd, int mmsg, const uint8_t *hdr, size_t hlen, const uint8_t *payload,
                 size_t plen, size_t mss, int skip, uint8_t *scratch, int max_pieces);
int ns_gro_merge(uint8_t *arena, size_t slot_size, uint32_t *lens, int n, const char *mac,
                 uint32_t *out_idx, uint32_t *out_gso);
#define NS_GSO_MAX_HDR ...
void *ns_uring_open(unsigned entries, int *err);
void ns_uring_close(void *ring);
void ns_uring_count_refused(void *ring, int *counter);
int ns_uring_write_batch(void *ring, int fd, const struct iovec *iov, const int *iov_counts,
                         int n_frames);
#define NS_URING_MIN ...
int ns_tap_write_batch(void *ring, int fd, const struct iovec *iov, const int *iov_counts,
                       int n_frames);
int ns_gso_write_uring(void *ring, int fd, const uint8_t *hdr, size_t hlen,
                       const uint8_t *payload, size_t plen, size_t mss, int skip,
                       uint8_t *scratch, int max_pieces);
int ns_udp_reflect(const uint8_t *udp, size_t udp_len, const uint8_t *eth, uint32_t src,
                   uint32_t dst, uint32_t ident, uint32_t ttl, uint8_t *out, size_t out_size);
struct ns_echo_peer {
    uint32_t ip;
    uint8_t eth[14];
    uint32_t used;
    int32_t last;
};
int ns_udp_echo_batch(const uint8_t *arena, size_t slot_size, size_t hlen, const uint32_t *lens,
                      const uint8_t *valid, int start, int n, const char *mac, uint32_t addr,
                      uint32_t bcast, uint32_t port, struct ns_echo_peer *peers, int npeers,
                      uint32_t mtu, uint32_t ident, uint32_t ttl, uint8_t *out, size_t out_size,
                      uint32_t *offs, uint64_t *rx_bytes);
int ns_udp_echo_runs(const uint8_t *arena, size_t slot_size, size_t hlen, const uint32_t *lens,
                     const uint8_t *valid, int start, int n, const char *mac, uint32_t addr,
                     uint32_t bcast, uint32_t port, uint32_t mtu, uint8_t *out, size_t out_size,
                     uint32_t *segs, int max_segs, int *nsegs, uint64_t *rx_bytes);
int ns_udp_echo_scan(const uint8_t *arena, size_t slot_size, size_t hlen, const uint32_t *lens,
                     int start, int n, uint32_t addr, uint32_t port);
int ns_ack_runs(const uint8_t *arena, size_t slot_size, size_t hlen, const uint32_t *lens, int n,
                const char *mac, uint32_t addr, uint32_t bcast, uint8_t *pure, int32_t *head,
                int32_t *member, uint16_t *wnd);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source("netstack._ffi", _SOURCE)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(_HERE.parent), verbose=True)
