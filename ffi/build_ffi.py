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

int ns_tap_open(const char *name, int flags, char *name_out);
int ns_if_hwaddr(const char *name, uint8_t *mac_out);
int ns_if_mtu(const char *name);
int ns_packet_open(const char *name);
int ns_epoll_create(void);
int ns_epoll_ctl(int epfd, int op, int fd, uint32_t events);
int ns_epoll_wait(int epfd, int *fds_out, uint32_t *events_out, int max, int timeout_ms);
int ns_read_batch(int fd, uint8_t *arena, size_t slot_size, int max_frames, uint32_t *lens_out);
int ns_write_batch(int fd, const struct iovec *iov, const int *iov_counts, int n_frames);
int ns_recv_batch(int fd, uint8_t *arena, size_t slot_size, int max_frames, uint32_t *lens_out);
int ns_send_batch(int fd, const struct iovec *iov, const int *iov_counts, int n_frames);
uint32_t ns_csum_partial(const uint8_t *buf, size_t len, uint32_t sum);
uint16_t ns_csum_fold(uint32_t sum);
uint32_t ns_rx_fast(const uint8_t *frame, size_t len, const char *mac, uint32_t addr,
                    uint32_t bcast);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source("netstack._ffi", _SOURCE)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(_HERE.parent), verbose=True)
