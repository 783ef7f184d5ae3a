/*
 * netstack C helpers, compiled by cffi (ffi/build_ffi.py) into netstack._ffi.
 *
 * Why C at all: Python pays ~1 us per syscall wrapper call and per frame object. These helpers
 * move a whole batch of frames per crossing (read loop / recvmmsg into a preallocated arena,
 * writev / sendmmsg from an iovec array) and compute the Internet checksum.
 *
 * Conventions: every function returns a count or 0 on success and -errno on failure. EINTR is
 * retried (except by epoll_wait, which reports 0 so the caller can look at its signal flags).
 * Every descriptor is opened O_NONBLOCK | O_CLOEXEC.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <linux/virtio_net.h>
#include <linux/io_uring.h>
#include <stdlib.h>
#include <sys/syscall.h>

/* Not in older uapi headers; the running kernel decides whether it knows them. */
#ifndef TUN_F_USO4
#define TUN_F_USO4 0x20 /* Linux >= 6.2 */
#endif
#ifndef TUN_F_USO6
#define TUN_F_USO6 0x40
#endif
#ifndef PACKET_QDISC_BYPASS
#define PACKET_QDISC_BYPASS 20
#endif
#ifndef IORING_SETUP_SUBMIT_ALL
#define IORING_SETUP_SUBMIT_ALL (1U << 7) /* Linux >= 5.18; older kernels: EINVAL, retried */
#endif
#ifndef RWF_NOWAIT
#define RWF_NOWAIT 0x00000008
#endif

#ifndef PACKET_IGNORE_OUTGOING
#define PACKET_IGNORE_OUTGOING 23 /* Linux >= 4.20 */
#endif

/* Largest batch a single call handles; bounds the on-stack mmsghdr / epoll_event arrays. */
#define NS_MAX_BATCH 1024
#define NS_MAX_EVENTS 256

static int ns_copy_ifname(struct ifreq *ifr, const char *name)
{
    size_t len;

    memset(ifr, 0, sizeof(*ifr));
    if (name == NULL)
        return 0;
    len = strlen(name);
    if (len >= IFNAMSIZ)
        return -EINVAL;
    memcpy(ifr->ifr_name, name, len);
    return 0;
}

/* Open /dev/net/tun and attach it to TAP/TUN interface `name` (created if it does not exist).
 * `flags` are the TUNSETIFF flags (IFF_TAP|IFF_NO_PI, later IFF_VNET_HDR, IFF_MULTI_QUEUE).
 * The kernel's chosen name (e.g. for "tap%d") is copied to name_out (IFNAMSIZ bytes). */
int ns_tap_open(const char *name, int flags, char *name_out)
{
    struct ifreq ifr;
    int fd, rc, err;

    rc = ns_copy_ifname(&ifr, name);
    if (rc < 0)
        return rc;
    ifr.ifr_flags = (short)flags;
    do {
        fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0)
        return -errno;
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        err = errno;
        close(fd);
        return -err;
    }
    if (name_out != NULL) {
        memcpy(name_out, ifr.ifr_name, IFNAMSIZ);
        name_out[IFNAMSIZ - 1] = '\0';
    }
    return fd;
}

/* Virtio-net header on a TAP fd opened with IFF_VNET_HDR: its size (TUNSETVNETHDRSZ), then
 * the offloads the reader accepts (TUNSETOFFLOAD, TUN_F_* bits). The kernel answers EINVAL to
 * a bit it does not know, so callers probe one feature at a time. */
int ns_tap_set_vnet_hdr_sz(int fd, int size)
{
    return ioctl(fd, TUNSETVNETHDRSZ, &size) < 0 ? -errno : 0;
}

int ns_tap_set_offload(int fd, unsigned int features)
{
    return ioctl(fd, TUNSETOFFLOAD, (unsigned long)features) < 0 ? -errno : 0;
}

/* AF_PACKET: a struct virtio_net_hdr (10 bytes) before every frame both ways
 * (PACKET_VNET_HDR), and transmit straight to the driver, past the qdisc
 * (PACKET_QDISC_BYPASS: no queueing discipline between us and a veth). */
int ns_packet_set_option(int fd, int option, int value)
{
    return setsockopt(fd, SOL_PACKET, option, &value, sizeof(value)) < 0 ? -errno : 0;
}

/* The receive queue of a socket: SO_RCVBUFFORCE (root: past net.core.rmem_max), else
 * SO_RCVBUF (capped by rmem_max). Returns what the kernel then reports (it doubles the value
 * asked for, for its bookkeeping), or -errno. */
int ns_socket_set_rcvbuf(int fd, int bytes)
{
    int got = 0;
    socklen_t len = sizeof(got);

    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bytes, sizeof(bytes)) < 0 &&
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof(bytes)) < 0)
        return -errno;
    if (getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &got, &len) < 0)
        return -errno;
    return got;
}

/* Frames the kernel dropped on an AF_PACKET socket since the last call (PACKET_STATISTICS
 * reads and resets): its receive queue (recvmmsg) or ring was full. The V3 ring's answer is
 * the longer tpacket_stats_v3; both start with tp_packets, tp_drops. -errno on failure. */
int ns_packet_drops(int fd)
{
    struct tpacket_stats_v3 st;
    socklen_t len = sizeof(st);

    memset(&st, 0, sizeof(st));
    if (getsockopt(fd, SOL_PACKET, PACKET_STATISTICS, &st, &len) < 0)
        return -errno;
    return st.tp_drops > INT32_MAX ? INT32_MAX : (int)st.tp_drops;
}

/* A throwaway socket for interface ioctls: AF_INET exists in every namespace; AF_PACKET is the
 * fallback for kernels built without IPv4. */
static int ns_ioctl_socket(void)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);

    if (fd < 0)
        fd = socket(AF_PACKET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    return fd < 0 ? -errno : fd;
}

static int ns_if_ioctl(const char *name, unsigned long request, struct ifreq *ifr)
{
    int fd, rc, err;

    rc = ns_copy_ifname(ifr, name);
    if (rc < 0)
        return rc;
    if (name == NULL || name[0] == '\0')
        return -EINVAL;
    fd = ns_ioctl_socket();
    if (fd < 0)
        return fd;
    rc = ioctl(fd, request, ifr);
    err = errno;
    close(fd);
    return rc < 0 ? -err : 0;
}

int ns_if_hwaddr(const char *name, uint8_t *mac_out)
{
    struct ifreq ifr;
    int rc = ns_if_ioctl(name, SIOCGIFHWADDR, &ifr);

    if (rc < 0)
        return rc;
    memcpy(mac_out, ifr.ifr_hwaddr.sa_data, 6);
    return 0;
}

int ns_if_mtu(const char *name)
{
    struct ifreq ifr;
    int rc = ns_if_ioctl(name, SIOCGIFMTU, &ifr);

    return rc < 0 ? rc : ifr.ifr_mtu;
}

/* A raw AF_PACKET socket bound to one interface. It is created with protocol 0 (receives
 * nothing) and only then bound with ETH_P_ALL to the ifindex, so no frame from another
 * interface can slip into its queue between socket() and bind(). */
int ns_packet_open(const char *name)
{
    struct sockaddr_ll sll;
    unsigned int ifindex;
    int fd, err, one = 1;

    if (name == NULL || strlen(name) >= IFNAMSIZ)
        return -EINVAL;
    ifindex = if_nametoindex(name);
    if (ifindex == 0)
        return -errno;
    fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof(one)) < 0)
        goto fail;
    memset(&sll, 0, sizeof(sll));
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(ETH_P_ALL);
    sll.sll_ifindex = (int)ifindex;
    if (bind(fd, (struct sockaddr *)&sll, sizeof(sll)) < 0)
        goto fail;
    return fd;
fail:
    err = errno;
    close(fd);
    return -err;
}

int ns_epoll_create(void)
{
    int fd = epoll_create1(EPOLL_CLOEXEC);

    return fd < 0 ? -errno : fd;
}

int ns_epoll_ctl(int epfd, int op, int fd, uint32_t events)
{
    struct epoll_event ev;

    memset(&ev, 0, sizeof(ev));
    ev.events = events;
    ev.data.fd = fd;
    return epoll_ctl(epfd, op, fd, &ev) < 0 ? -errno : 0;
}

/* EINTR returns 0 (no events): the Python caller then runs its signal handlers. */
int ns_epoll_wait(int epfd, int *fds_out, uint32_t *events_out, int max, int timeout_ms)
{
    struct epoll_event evs[NS_MAX_EVENTS];
    int n, i;

    if (max <= 0)
        return -EINVAL;
    if (max > NS_MAX_EVENTS)
        max = NS_MAX_EVENTS;
    n = epoll_wait(epfd, evs, max, timeout_ms);
    if (n < 0)
        return errno == EINTR ? 0 : -errno;
    for (i = 0; i < n; i++) {
        fds_out[i] = evs[i].data.fd;
        events_out[i] = evs[i].events;
    }
    return n;
}

/* TAP receive: one read() per frame into consecutive slots until EAGAIN or max_frames.
 * lens_out[i] is what read() returned. The kernel silently truncates a frame longer than the
 * slot, so callers size slots above the largest legal frame and treat lens_out[i] >= slot_size
 * as "truncated". An error after at least one frame ends the batch early; the next call
 * reports it. */
int ns_read_batch(int fd, uint8_t *arena, size_t slot_size, int max_frames, uint32_t *lens_out)
{
    int i = 0;
    ssize_t n;

    while (i < max_frames) {
        n = read(fd, arena + (size_t)i * slot_size, slot_size);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK || i > 0)
                break;
            return -errno;
        }
        if (n == 0)
            break;
        lens_out[i++] = (uint32_t)n;
    }
    return i;
}

/* TAP transmit: one writev() per frame, frame i made of iov_counts[i] consecutive iovecs.
 * Stops at EAGAIN and returns the frames written. A hard error on the first frame returns
 * -errno (the caller drops that frame); on a later frame it returns the frames written so far,
 * and the next call (starting at the failing frame) reports it. */
int ns_write_batch(int fd, const struct iovec *iov, const int *iov_counts, int n_frames)
{
    int i = 0;
    ssize_t n;

    while (i < n_frames) {
        n = writev(fd, iov, iov_counts[i]);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK || i > 0)
                break;
            return -errno;
        }
        iov += iov_counts[i];
        i++;
    }
    return i;
}

static int ns_complete_partial(uint8_t *f, size_t len, size_t mtu);

/* AF_PACKET receive: recvmmsg() of up to max_frames into consecutive slots. MSG_TRUNC makes the
 * kernel report a frame's real length, so (as for ns_read_batch) lens_out[i] >= slot_size means
 * "truncated". With `aux`, each message also gets
 * room for its tpacket_auxdata (PACKET_AUXDATA), and a frame whose checksum it says is still
 * partial is completed in place (ns_complete_partial, `mtu` the link's; `completed`, may be
 * NULL, gains the frames completed). */
static int ns_recvmmsg_batch(int fd, uint8_t *arena, size_t slot_size, int max_frames,
                             uint32_t *lens_out, int aux, uint64_t *completed, uint32_t mtu)
{
    struct mmsghdr msgs[64];
    struct iovec iovs[64];
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(struct tpacket_auxdata))];
    } ctrl[64];
    int total = 0, want, n, i;

    while (total < max_frames) {
        want = max_frames - total;
        if (want > 64)
            want = 64;
        memset(msgs, 0, sizeof(msgs[0]) * (size_t)want);
        for (i = 0; i < want; i++) {
            iovs[i].iov_base = arena + (size_t)(total + i) * slot_size;
            iovs[i].iov_len = slot_size;
            msgs[i].msg_hdr.msg_iov = &iovs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            if (aux) {
                msgs[i].msg_hdr.msg_control = ctrl[i].buf;
                msgs[i].msg_hdr.msg_controllen = sizeof(ctrl[i].buf);
            }
        }
        n = recvmmsg(fd, msgs, (unsigned int)want, MSG_DONTWAIT | MSG_TRUNC, NULL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK || total > 0)
                break;
            return -errno;
        }
        for (i = 0; i < n; i++) {
            struct cmsghdr *c;

            lens_out[total + i] = msgs[i].msg_len;
            if (!aux || msgs[i].msg_len >= slot_size) /* truncated: the caller drops it */
                continue;
            for (c = CMSG_FIRSTHDR(&msgs[i].msg_hdr); c != NULL;
                 c = CMSG_NXTHDR(&msgs[i].msg_hdr, c)) {
                struct tpacket_auxdata ad;

                if (c->cmsg_level != SOL_PACKET || c->cmsg_type != PACKET_AUXDATA ||
                    c->cmsg_len < CMSG_LEN(sizeof(ad)))
                    continue;
                memcpy(&ad, CMSG_DATA(c), sizeof(ad));
                if ((ad.tp_status & TP_STATUS_CSUMNOTREADY) &&
                    ns_complete_partial(iovs[i].iov_base, msgs[i].msg_len, mtu) && completed)
                    (*completed)++;
            }
        }
        total += n;
        if (n < want)
            break;
    }
    return total;
}

int ns_recv_batch(int fd, uint8_t *arena, size_t slot_size, int max_frames, uint32_t *lens_out)
{
    return ns_recvmmsg_batch(fd, arena, slot_size, max_frames, lens_out, 0, NULL, 0);
}

/* AF_PACKET transmit: sendmmsg() of the whole batch (chunks of 64), frames as for
 * ns_write_batch; same return convention. */
int ns_send_batch(int fd, const struct iovec *iov, const int *iov_counts, int n_frames)
{
    struct mmsghdr msgs[64];
    const struct iovec *next = iov;
    int total = 0, want, n, i;

    while (total < n_frames) {
        const struct iovec *chunk = next;

        want = n_frames - total;
        if (want > 64)
            want = 64;
        memset(msgs, 0, sizeof(msgs[0]) * (size_t)want);
        for (i = 0; i < want; i++) {
            msgs[i].msg_hdr.msg_iov = (struct iovec *)next;
            msgs[i].msg_hdr.msg_iovlen = (size_t)iov_counts[total + i];
            next += iov_counts[total + i];
        }
        n = sendmmsg(fd, msgs, (unsigned int)want, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR) {
                next = chunk;
                continue;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK || total > 0)
                break;
            return -errno;
        }
        total += n;
        if (n < want)
            break;
    }
    return total;
}

/* RFC 1071 partial sum: adds buf's 16-bit big-endian words to `sum` and returns an unfolded
 * 32-bit value congruent to the result modulo 0xFFFF. Words are summed in native byte order
 * into a 64-bit accumulator (RFC 1071 2(B): the ones-complement sum is byte-order independent)
 * and swapped once at the end. An odd tail byte is the high byte of a zero-padded word. */
uint32_t ns_csum_partial(const uint8_t *buf, size_t len, uint32_t sum)
{
    uint64_t acc = 0;
    uint32_t w0, w1, w2, w3;
    uint16_t h;

    while (len >= 16) {
        memcpy(&w0, buf, 4);
        memcpy(&w1, buf + 4, 4);
        memcpy(&w2, buf + 8, 4);
        memcpy(&w3, buf + 12, 4);
        acc += (uint64_t)w0 + w1 + w2 + w3;
        buf += 16;
        len -= 16;
    }
    while (len >= 4) {
        memcpy(&w0, buf, 4);
        acc += w0;
        buf += 4;
        len -= 4;
    }
    if (len >= 2) {
        memcpy(&h, buf, 2);
        acc += h;
        buf += 2;
        len -= 2;
    }
    if (len) {
        uint8_t tail[2] = {buf[0], 0};

        memcpy(&h, tail, 2);
        acc += h;
    }
    /* Fold 64 -> 16 bits with end-around carry, then into network order. */
    acc = (acc & 0xffffffffu) + (acc >> 32);
    acc = (acc & 0xffffffffu) + (acc >> 32);
    acc = (acc & 0xffffu) + (acc >> 16);
    acc = (acc & 0xffffu) + (acc >> 16);
    acc = (acc & 0xffffu) + (acc >> 16);
    h = (uint16_t)acc;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    h = (uint16_t)((h >> 8) | (h << 8));
#endif
    acc = (uint64_t)sum + h;
    acc = (acc & 0xffffffffu) + (acc >> 32);
    return (uint32_t)acc;
}

/* Fold a partial sum to 16 bits and complement it: the value for a checksum field. */
uint16_t ns_csum_fold(uint32_t sum)
{
    uint64_t s = sum;

    s = (s & 0xffffu) + (s >> 16);
    s = (s & 0xffffu) + (s >> 16);
    s = (s & 0xffffu) + (s >> 16);
    return (uint16_t)(~s & 0xffffu);
}

/* Complete a partial checksum (virtio-net NEEDS_CSUM) in place: the one's complement sum from
 * `start` to the end of the frame, whose checksum field (at start + offset) holds the
 * pseudo-header sum meanwhile, stored at start + offset. A UDP result of 0 is sent as 0xffff
 * (RFC 768). -EINVAL when the positions lie outside the frame. */
int ns_csum_complete(uint8_t *frame, size_t len, size_t start, size_t offset)
{
    uint16_t c;

    if (start >= len || offset > len - start || len - start - offset < 2)
        return -EINVAL;
    c = ns_csum_fold(ns_csum_partial(frame + start, len - start, 0));
    if (c == 0 && offset == 6)
        c = 0xffff;
    frame[start + offset] = (uint8_t)(c >> 8);
    frame[start + offset + 1] = (uint8_t)(c & 0xff);
    return 0;
}

/* A frame the kernel handed to a packet socket with its L4 checksum not yet computed
 * (TP_STATUS_CSUMNOTREADY: CHECKSUM_PARTIAL, a segment or datagram a local socket sent over a
 * veth, whose NIC would have summed it): complete it where it lies, as that NIC would, so a
 * link without the virtio-net header (offload "off") sees what a wire carries. Untagged
 * Ethernet; IPv4 (any header length, not a fragment) or IPv6 with TCP or UDP right after the
 * fixed header (partial checksums come only from the local TCP/UDP senders); the sum runs to
 * the IP length, not to any padding. A TSO super-frame (longer than the MTU) is completed the
 * same way: the stack takes it as one segment. A UDP datagram longer than the MTU is a
 * USO/UDP_SEGMENT super-datagram whose one checksum would make several datagrams one: it is
 * left partial, so it is dropped as a bad checksum (`mtu` 0: no such limit). Returns 1 when
 * completed, 0 when the frame is none of these (it is then verified and dropped as the wire
 * would show it). */
static int ns_complete_partial(uint8_t *f, size_t len, size_t mtu)
{
    size_t start, end;
    uint8_t proto;

    if (len < 14 + 20 + 8)
        return 0;
    if (f[12] == 0x08 && f[13] == 0x00 && (f[14] >> 4) == 4) {
        start = 14 + (size_t)(f[14] & 0x0f) * 4;
        end = 14 + (((size_t)f[16] << 8) | f[17]);
        if (start < 34 || (((f[20] << 8) | f[21]) & 0x3fff) != 0)
            return 0;
        proto = f[23];
    } else if (f[12] == 0x86 && f[13] == 0xdd && (f[14] >> 4) == 6 && len >= 54 + 8) {
        start = 54;
        end = 54 + (((size_t)f[18] << 8) | f[19]);
        proto = f[20];
    } else {
        return 0;
    }
    if (end > len || start >= end)
        return 0;
    if (proto == 6)
        return ns_csum_complete(f, end, start, 16) == 0;
    if (proto == 17 && (mtu == 0 || end - 14 <= mtu))
        return ns_csum_complete(f, end, start, 6) == 0;
    return 0;
}

/* ns_recv_batch on a socket with PACKET_AUXDATA (a packet link without the virtio-net
 * header): each frame's auxiliary data says whether its checksum is still partial, and such
 * a frame is completed in place (ns_complete_partial, `mtu` the link's). `completed` (may be
 * NULL) gains the frames completed. Same return convention as ns_recv_batch. */
int ns_recv_batch_aux(int fd, uint8_t *arena, size_t slot_size, int max_frames,
                      uint32_t *lens_out, uint64_t *completed, uint32_t mtu)
{
    return ns_recvmmsg_batch(fd, arena, slot_size, max_frames, lens_out, 1, completed, mtu);
}

/* Receive fast path (netstack/proto/host.py Host.receive): is `frame` the common case? That is:
 * to our MAC from a unicast MAC; IPv4 with a 20-byte header, a total length that fits, not a
 * fragment, to `addr` from a source the general path accepts (not 0/8, 127/8, multicast or
 * above, ours, or the subnet broadcast `bcast`), a good header checksum; carrying UDP (length
 * field within the datagram, checksum 0 or good) or TCP (header length within the segment,
 * good checksum). Returns (total_length << 8) | protocol then, else 0: the general path decides
 * and counts the drop, so this only ever skips work, never a check. */
uint32_t ns_rx_fast_v(const uint8_t *f, size_t len, const char *mac, uint32_t addr,
                      uint32_t bcast, int l4_valid);
int ns_vnet_rx_plain_v(uint8_t *arena, size_t slot_size, size_t hlen, const uint32_t *lens,
                       int n, uint8_t *verified);

uint32_t ns_rx_fast(const uint8_t *f, size_t len, const char *mac, uint32_t addr, uint32_t bcast)
{
    return ns_rx_fast_v(f, len, mac, addr, bcast, 0);
}

/* ns_rx_fast for a frame whose L4 checksum is known good (`l4_valid`: the kernel's DATA_VALID,
 * or a partial checksum ns_vnet_rx_plain_v just completed over exactly this datagram): every
 * other check as ns_rx_fast, the L4 checksum pass skipped (it was summed once already). */
uint32_t ns_rx_fast_v(const uint8_t *f, size_t len, const char *mac, uint32_t addr,
                      uint32_t bcast, int l4_valid)
{
    const uint8_t *ip = f + 14, *l4 = f + 34;
    uint32_t total, src, dst, pseudo, l4len, ulen, hlen;
    uint8_t proto;

    if (len < 34 || memcmp(f, mac, 6) != 0 || (f[6] & 1) || f[12] != 0x08 || f[13] != 0x00)
        return 0;
    if (ip[0] != 0x45)
        return 0;
    total = ((uint32_t)ip[2] << 8) | ip[3];
    if (total < 20 || total > len - 14 || ((ip[6] & 0x3f) | ip[7]) != 0)
        return 0;
    src = ((uint32_t)ip[12] << 24) | ((uint32_t)ip[13] << 16) | ((uint32_t)ip[14] << 8) | ip[15];
    dst = ((uint32_t)ip[16] << 24) | ((uint32_t)ip[17] << 16) | ((uint32_t)ip[18] << 8) | ip[19];
    if (dst != addr || src < 0x01000000u || src >= 0xE0000000u || (src >> 24) == 127 ||
        src == dst || src == bcast)
        return 0;
    proto = ip[9];
    if ((proto != 6 && proto != 17) || ns_csum_fold(ns_csum_partial(ip, 20, 0)) != 0)
        return 0;
    l4len = total - 20;
    pseudo = (src >> 16) + (src & 0xffffu) + (dst >> 16) + (dst & 0xffffu) + proto;
    if (proto == 17) {
        if (l4len < 8)
            return 0;
        ulen = ((uint32_t)l4[4] << 8) | l4[5];
        if (ulen < 8 || ulen > l4len)
            return 0;
        if (!l4_valid && (l4[6] | l4[7]) &&
            ns_csum_fold(ns_csum_partial(l4, ulen, pseudo + ulen)) != 0)
            return 0;
    } else {
        if (l4len < 20)
            return 0;
        hlen = (uint32_t)(l4[12] >> 4) * 4;
        if (hlen < 20 || hlen > l4len)
            return 0;
        if (!l4_valid && ns_csum_fold(ns_csum_partial(l4, l4len, pseudo + l4len)) != 0)
            return 0;
    }
    return (total << 8) | proto;
}

/* Receive with the virtio-net header (netstack/io/link.py BatchLink._receive_vnet): the common
 * case of a batch is frames whose header says nothing, or an ordinary (not GSO) frame whose L4
 * checksum the kernel left partial (its CHECKSUM_PARTIAL: every UDP datagram and small TCP
 * segment from a local socket). This completes those checksums where they lie, as
 * ns_csum_complete, and marks the header DATA_VALID (so a look at it in Python vouches for the
 * frame as link.py's _complete would, and never sums it twice). Returns how many frames of the
 * n still need Python's look at their header (a GSO super-frame, a DATA_VALID or other flag from
 * the kernel, a checksum position outside the frame, a truncated or short frame); 0 means every
 * frame is now exactly what a wire would carry (a completed checksum is a true one): metadata 0
 * for all, and the stack verifies their checksums as for any plain frame. */
/* Is the checksum just completed at (start, offset) exactly the L4 checksum ns_rx_fast would
 * verify? An Ethernet + IPv4 frame with a 20-byte header, not a fragment, no padding after
 * the datagram, TCP at offset 16 or UDP (its length = the datagram's) at offset 6. */
static int completed_is_l4(const uint8_t *f, size_t len, uint16_t start, uint16_t offset)
{
    const uint8_t *ip = f + 14;
    uint32_t total;

    if (len < 42 || start != 34 || f[12] != 0x08 || f[13] != 0x00 || ip[0] != 0x45)
        return 0;
    total = ((uint32_t)ip[2] << 8) | ip[3];
    if (total != len - 14 || ((ip[6] & 0x3f) | ip[7]) != 0)
        return 0;
    if (ip[9] == 6)
        return offset == 16 && total >= 40;
    if (ip[9] == 17)
        return offset == 6 && (((uint32_t)f[38] << 8) | f[39]) == total - 20;
    return 0;
}

enum { VNET_PLAIN = 0, VNET_ODD = 1, VNET_COMPLETED = 2, VNET_COMPLETED_L4 = 3 };

/* One frame (its vnet header first, `len` bytes in all) of a batch without GSO: complete a
 * partial checksum (NEEDS_CSUM) and mark the header DATA_VALID. Returns VNET_PLAIN (nothing to
 * do), VNET_ODD (a header this path can't take), VNET_COMPLETED, or VNET_COMPLETED_L4 when the
 * completed checksum is exactly the frame's IPv4 TCP/UDP one (completed_is_l4). Shared by the
 * arena (ns_vnet_rx_plain_v) and the TPACKET_V3 ring (ns_vnet_rx_plain_at). */
static int ns_vnet_fix(uint8_t *h, size_t len, size_t hlen)
{
    uint16_t start, offset;

    if (h[0] == 0 && h[1] == 0)
        return VNET_PLAIN;
    if (h[0] != 1 || h[1] != 0) /* not exactly NEEDS_CSUM without GSO */
        return VNET_ODD;
    memcpy(&start, h + 6, 2); /* native order, as wire/vnet.py's "=BBHHHH" */
    memcpy(&offset, h + 8, 2);
    if (ns_csum_complete(h + hlen, len - hlen, start, offset) < 0)
        return VNET_ODD;
    h[0] = 2; /* DATA_VALID: what a look at this header in Python will see */
    return completed_is_l4(h + hlen, len - hlen, start, offset) ? VNET_COMPLETED_L4
                                                                : VNET_COMPLETED;
}

int ns_vnet_rx_plain(uint8_t *arena, size_t slot_size, size_t hlen, const uint32_t *lens, int n)
{
    return ns_vnet_rx_plain_v(arena, slot_size, hlen, lens, n, NULL) & 0xffff;
}

/* ns_vnet_rx_plain, also saying which frames' L4 checksums it completed (so the receive fast
 * path need not sum them again): `verified` (n bytes, or NULL) gets 2 (DATA_VALID) for those
 * whose completed checksum is exactly their IPv4 TCP/UDP checksum (completed_is_l4), else 0.
 * Returns the odd count as ns_vnet_rx_plain | (the number of frames marked verified << 16). */
int ns_vnet_rx_plain_v(uint8_t *arena, size_t slot_size, size_t hlen, const uint32_t *lens,
                       int n, uint8_t *verified)
{
    int odd = 0, valid = 0;
    for (int i = 0; i < n; i++) {
        size_t len = lens[i];
        int r;
        if (verified)
            verified[i] = 0;
        if (len >= slot_size || len < hlen || hlen < 10) {
            odd++;
            continue;
        }
        r = ns_vnet_fix(arena + (size_t)i * slot_size, len, hlen);
        if (r == VNET_ODD) {
            odd++;
        } else if (r == VNET_COMPLETED_L4 && verified) {
            verified[i] = 2;
            valid++;
        }
    }
    return odd | (valid << 16);
}

/* The IPv6 sibling of ns_rx_fast (netstack/proto/fast6.py): to our MAC from a unicast MAC;
 * IPv6 with a non-zero payload length that fits the frame, next header UDP, TCP or ICMPv6 right
 * after the fixed header (no extension headers), a source that is not multicast or ::1, a
 * destination that is not multicast; carrying UDP (length field within the payload, checksum
 * non-zero and good over the RFC 8200 8.1 pseudo-header), TCP (a whole header, data offset
 * within the payload, checksum good) or ICMPv6 (at least its 4-byte header, checksum good).
 * Returns (payload_length << 8) | next header then, else 0. Whether the addresses are ours
 * stays in Python (a dict lookup); as for ns_rx_fast, the general path decides and counts every drop, so this only ever skips work, never a check. */
uint32_t ns_rx_fast6(const uint8_t *f, size_t len, const char *mac)
{
    static const uint8_t loopback[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    const uint8_t *ip = f + 14, *l4 = f + 54;
    uint32_t plen, ulen, pseudo = 0;
    uint8_t nh;
    int i;

    if (len < 54 || memcmp(f, mac, 6) != 0 || (f[6] & 1) || f[12] != 0x86 || f[13] != 0xDD)
        return 0;
    if ((ip[0] >> 4) != 6)
        return 0;
    plen = ((uint32_t)ip[4] << 8) | ip[5];
    nh = ip[6];
    if (plen == 0 || plen > len - 54 || (nh != 17 && nh != 58 && nh != 6))
        return 0;
    if (ip[8] == 0xFF || ip[24] == 0xFF || memcmp(ip + 8, loopback, 16) == 0)
        return 0;
    for (i = 8; i < 40; i += 2) /* source and destination of the pseudo-header */
        pseudo += ((uint32_t)ip[i] << 8) | ip[i + 1];
    if (nh == 17) {
        if (plen < 8)
            return 0;
        ulen = ((uint32_t)l4[4] << 8) | l4[5];
        if (ulen < 8 || ulen > plen || (l4[6] | l4[7]) == 0)
            return 0;
        if (ns_csum_fold(ns_csum_partial(l4, ulen, pseudo + ulen + 17)) != 0)
            return 0;
    } else if (nh == 6) { /* TCP: a whole header (data offset within the payload) */
        if (plen < 20 || (l4[12] >> 4) < 5 || (uint32_t)(l4[12] >> 4) * 4 > plen)
            return 0;
        if (ns_csum_fold(ns_csum_partial(l4, plen, pseudo + plen + 6)) != 0)
            return 0;
    } else {
        if (plen < 4 || ns_csum_fold(ns_csum_partial(l4, plen, pseudo + plen + 58)) != 0)
            return 0;
    }
    return (plen << 8) | nh;
}

/* ns_vnet_rx_plain for frames that lie at offsets of one buffer (the TPACKET_V3 ring): frame i
 * (its header first) is the lens[i] bytes at base + offs[i]. */
int ns_vnet_rx_plain_at(uint8_t *base, const uint32_t *offs, const uint32_t *lens, int n,
                        size_t hlen)
{
    int odd = 0;
    for (int i = 0; i < n; i++) {
        if (lens[i] < hlen || hlen < 10) {
            odd++;
            continue;
        }
        odd += ns_vnet_fix(base + offs[i], lens[i], hlen) == VNET_ODD;
    }
    return odd;
}

/* AF_PACKET TPACKET_V3 receive ring (PACKET_RX_RING). The kernel fills blocks of
 * `block_size` bytes with frames and hands a block over (TP_STATUS_USER) when it is full or
 * `tov_ms` after it got its first frame (the retire timer; the latency price of the ring for
 * sparse traffic). Frames are read where they lie (no copy, no syscall per batch); a block is
 * given back (TP_STATUS_KERNEL) by the next ns_ring_recv after the one that walked its last
 * frame, because the caller's views into it live until then (link.py: "valid until the next
 * receive_batch"). With PACKET_VNET_HDR set before the ring, tpacket_rcv reserves the header
 * in front of the MAC header (netoff += vnet_hdr_sz; virtio_net_hdr_from_skb writes it at
 * h.raw + tp_mac - sizeof(struct virtio_net_hdr)), so a frame with its header is contiguous,
 * as in the recvmmsg arena. State lives in a struct ns_ring the caller allocates. */
struct ns_ring {
    uint8_t *base;      /* the mmap'ed ring */
    uint64_t size;      /* its length */
    uint32_t block_size;
    uint32_t block_nr;
    uint32_t cur;       /* block being walked */
    uint32_t pkt;       /* frames of `cur` already handed out */
    uint32_t next_off;  /* offset in `cur` of the next frame */
    uint32_t release;   /* walked blocks before `cur` still to give back */
    uint32_t hlen;      /* virtio-net header length before each frame (0: none) */
    uint32_t truncated; /* frames the kernel clamped to fit a block (the caller zeroes it) */
    uint64_t blocks;    /* blocks walked to the end, ever */
    uint64_t completed; /* partial checksums completed (no vnet header), ever */
    uint32_t mtu;       /* the link's, for ns_complete_partial (the caller sets it) */
};

/* Turn `fd` (an AF_PACKET socket, PACKET_VNET_HDR already decided: the kernel refuses it once
 * a ring exists) into a TPACKET_V3 ring reader and map the ring into `ring`. Frames queued on
 * the socket before the ring existed are read and discarded: poll() would otherwise report
 * them for ever, and nothing reads the socket's queue once the ring is in use. On failure the
 * socket is left as it was (no ring, TPACKET_V1) and -errno returned. */
int ns_ring_open(int fd, struct ns_ring *ring, uint32_t block_size, uint32_t block_nr,
                 uint32_t frame_size, uint32_t tov_ms, uint32_t hlen)
{
    struct tpacket_req3 req;
    int version = TPACKET_V3, err;
    uint8_t scratch[64];
    void *map;

    if (block_size == 0 || block_nr == 0 || frame_size == 0 || block_size % frame_size)
        return -EINVAL;
    memset(ring, 0, sizeof(*ring));
    if (setsockopt(fd, SOL_PACKET, PACKET_VERSION, &version, sizeof(version)) < 0)
        return -errno;
    memset(&req, 0, sizeof(req));
    req.tp_block_size = block_size;
    req.tp_block_nr = block_nr;
    req.tp_frame_size = frame_size;
    req.tp_frame_nr = (block_size / frame_size) * block_nr;
    req.tp_retire_blk_tov = tov_ms;
    if (setsockopt(fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof(req)) < 0)
        goto undo_version;
    map = mmap(NULL, (size_t)block_size * block_nr, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED)
        goto undo_ring;
    ring->base = map;
    ring->size = (uint64_t)block_size * block_nr;
    ring->block_size = block_size;
    ring->block_nr = block_nr;
    ring->hlen = hlen;
    for (;;) {
        ssize_t n = recv(fd, scratch, sizeof(scratch), MSG_DONTWAIT | MSG_TRUNC);
        if (n < 0 && errno != EINTR)
            break;
    }
    return 0;
undo_ring:
    err = errno;
    memset(&req, 0, sizeof(req));
    setsockopt(fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof(req));
    errno = err;
undo_version:
    err = errno;
    version = TPACKET_V1;
    setsockopt(fd, SOL_PACKET, PACKET_VERSION, &version, sizeof(version));
    return -err;
}

/* Unmap the ring (before the socket is closed); idempotent. */
void ns_ring_close(struct ns_ring *ring)
{
    if (ring->base != NULL) {
        munmap(ring->base, (size_t)ring->size);
        ring->base = NULL;
    }
}

/* One receive batch from the ring: first give back the blocks the previous batch finished,
 * then walk ready blocks until max_frames. Frame i (its virtio-net header first when hlen) is
 * the lens_out[i] bytes at ring->base + offs_out[i]. A frame the kernel clamped (longer than
 * a block holds) is skipped and counted in ring->truncated. Returns the frames found. */
int ns_ring_recv(struct ns_ring *ring, int max_frames, uint32_t *offs_out, uint32_t *lens_out)
{
    uint32_t bs = ring->block_size, nr = ring->block_nr;
    int n = 0;

    if (ring->base == NULL)
        return -EBADF;
    while (ring->release) {
        uint32_t b = (ring->cur + nr - ring->release) % nr;
        struct tpacket_block_desc *d = (void *)(ring->base + (size_t)b * bs);

        __atomic_store_n(&d->hdr.bh1.block_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
        ring->release--;
    }
    /* release == nr: every block was walked in this call and waits to be given back, `cur`
     * included; walking on would hand out its frames a second time. */
    while (n < max_frames && ring->release < nr) {
        uint8_t *blk = ring->base + (size_t)ring->cur * bs;
        struct tpacket_block_desc *d = (void *)blk;
        uint32_t num;

        if (!(__atomic_load_n(&d->hdr.bh1.block_status, __ATOMIC_ACQUIRE) & TP_STATUS_USER))
            break;
        num = d->hdr.bh1.num_pkts;
        if (ring->pkt == 0)
            ring->next_off = d->hdr.bh1.offset_to_first_pkt;
        while (ring->pkt < num && n < max_frames) {
            const struct tpacket3_hdr *h = (const void *)(blk + ring->next_off);
            uint32_t mac = ring->next_off + h->tp_mac;

            if (h->tp_snaplen < h->tp_len || h->tp_mac < ring->hlen ||
                (uint64_t)mac + h->tp_snaplen > bs) {
                ring->truncated++;
            } else {
                offs_out[n] = ring->cur * bs + mac - ring->hlen;
                lens_out[n] = h->tp_snaplen + ring->hlen;
                n++;
                /* without the virtio-net header, a partial checksum is only said here */
                if (ring->hlen == 0 && (h->tp_status & TP_STATUS_CSUMNOTREADY) &&
                    ns_complete_partial(blk + mac, h->tp_snaplen, ring->mtu))
                    ring->completed++;
            }
            ring->next_off += h->tp_next_offset;
            ring->pkt++;
        }
        if (ring->pkt >= num) {
            ring->cur = (ring->cur + 1) % nr;
            ring->pkt = 0;
            ring->release++;
            ring->blocks++;
        }
    }
    return n;
}

/* ---- Software GSO and GRO (a link without offloads; netstack/io/link.py, issue 10) -------
 * What Linux does for a device that negotiated nothing: its TCP still builds 64 KB segments
 * and skb_gso_segment cuts them just before the driver; NAPI's GRO (tcp_gro_receive) coalesces
 * the in-order segments of one flow within a poll. Here the cut happens in the link writer and
 * the merge in the link reader, so one Python step moves up to 64 KB either way. */

#define NS_GSO_MAX_HDR 160 /* Ethernet (14) + IPv4 with options (60) or IPv6 (40) + TCP (60) */

static uint32_t ns_be16(const uint8_t *p) { return ((uint32_t)p[0] << 8) | p[1]; }
static uint32_t ns_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static void ns_put16(uint8_t *p, uint32_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void ns_put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

/* Where the TCP or UDP header of an untagged Ethernet frame starts (IPv4 with any header
 * length, or IPv6 with the transport header right after the fixed header), its protocol
 * (6 or 17) in *proto, and its pseudo-header sum (protocol included) without the length.
 * Returns 0 for anything else. */
static size_t ns_gso_l4(const uint8_t *f, size_t len, uint32_t *pseudo, uint8_t *proto)
{
    uint32_t s = 0;
    size_t l4;
    uint8_t p;

    if (len < 14 + 20 + 8)
        return 0;
    if (f[12] == 0x08 && f[13] == 0x00 && (f[14] >> 4) == 4) {
        l4 = 14 + (size_t)(f[14] & 0x0f) * 4;
        p = f[23];
        if (l4 < 34)
            return 0;
        for (int i = 26; i < 34; i += 2)
            s += ns_be16(f + i);
    } else if (f[12] == 0x86 && f[13] == 0xDD && (f[14] >> 4) == 6) {
        if (len < 54 + 8)
            return 0;
        l4 = 54;
        p = f[20];
        for (int i = 22; i < 54; i += 2)
            s += ns_be16(f + i);
    } else {
        return 0;
    }
    if ((p != 6 && p != 17) || l4 + (p == 6 ? 20 : 8) > len)
        return 0;
    *pseudo = s + p;
    *proto = p;
    return l4;
}

/* Cut a TCP super-segment into wire segments, as the kernel's tcp_gso_segment (and
 * netstack/wire/vnet.py software_segments, the reference): `hdr` is the super-frame's
 * Ethernet + IP + TCP header (hlen bytes), `plen` payload bytes follow it elsewhere. Piece i
 * carries payload [i*mss, min((i+1)*mss, plen)) after its own copy of the header, written to
 * hdrs_out + i*hlen: IPv4 total length, ID + i (RFC 6864, as Linux) and header checksum, or
 * the IPv6 payload length; sequence number advanced; FIN/PSH only on the last piece, CWR only
 * on the first; the complete TCP checksum over the piece (its payload summed here).
 * A UDP super-frame (GSO_UDP_L4: the echo runs, proto/udp.py) is cut as __udp_gso_segment
 * does: `hdr` ends after the UDP header, each piece is a datagram of `mss` payload bytes (the
 * last shorter) with its IP fields as above, its UDP length and its complete checksum (0 sent
 * as 0xffff, RFC 768). Returns the number of pieces, or -EINVAL (not an IPv4/IPv6 TCP or UDP
 * header, hlen beyond NS_GSO_MAX_HDR, mss 0, more than max_pieces pieces, a datagram over
 * 65535 bytes). */
int ns_gso_cut(const uint8_t *hdr, size_t hlen, const uint8_t *payload, size_t plen, size_t mss,
               uint8_t *hdrs_out, int max_pieces)
{
    uint32_t pseudo, seq = 0, ident = 0;
    size_t l4, thl, off;
    int pieces, v4, i;
    uint8_t flags = 0, proto;

    if (hlen > NS_GSO_MAX_HDR || mss == 0 || plen == 0)
        return -EINVAL;
    l4 = ns_gso_l4(hdr, hlen, &pseudo, &proto);
    if (l4 == 0)
        return -EINVAL;
    thl = proto == 6 ? (size_t)(hdr[l4 + 12] >> 4) * 4 : 8;
    if (thl < 8 || l4 + thl != hlen || mss + thl + (l4 - 14) > 65535)
        return -EINVAL;
    pieces = (int)((plen + mss - 1) / mss);
    if (pieces > max_pieces)
        return -EINVAL;
    v4 = hdr[12] == 0x08;
    if (v4)
        ident = ns_be16(hdr + 18);
    if (proto == 6) {
        seq = ns_be32(hdr + l4 + 4);
        flags = hdr[l4 + 13];
    }
    for (i = 0, off = 0; i < pieces; i++, off += mss) {
        uint8_t *h = hdrs_out + (size_t)i * hlen;
        size_t chunk = plen - off < mss ? plen - off : mss;
        uint32_t sum;
        uint16_t c;

        memcpy(h, hdr, hlen);
        if (v4) {
            ns_put16(h + 16, (uint32_t)(l4 - 14 + thl + chunk));
            ns_put16(h + 18, (ident + (uint32_t)i) & 0xffffu);
            h[24] = h[25] = 0;
            ns_put16(h + 24, ns_csum_fold(ns_csum_partial(h + 14, l4 - 14, 0)));
        } else {
            ns_put16(h + 18, (uint32_t)(thl + chunk));
        }
        if (proto == 6) {
            uint8_t f = flags;

            ns_put32(h + l4 + 4, seq + (uint32_t)off);
            if (i + 1 < pieces)
                f &= (uint8_t)~0x09; /* FIN, PSH: the last piece's */
            if (i > 0)
                f &= (uint8_t)~0x80; /* CWR: the first's */
            h[l4 + 13] = f;
            h[l4 + 16] = h[l4 + 17] = 0;
        } else {
            ns_put16(h + l4 + 4, (uint32_t)(8 + chunk));
            h[l4 + 6] = h[l4 + 7] = 0;
        }
        sum = ns_csum_partial(h + l4, thl, pseudo + (uint32_t)(thl + chunk));
        sum = ns_csum_partial(payload + off, chunk, sum);
        c = ns_csum_fold(sum);
        if (proto == 6) {
            ns_put16(h + l4 + 16, c);
        } else {
            ns_put16(h + l4 + 6, c ? c : 0xffffu);
        }
    }
    return pieces;
}

/* The iovecs of cut pieces first..first+want-1: each its header (in `scratch`, as ns_gso_cut
 * left it) and its slice of the payload where it lies (no copy). */
static void ns_gso_iov(struct iovec *iov, const uint8_t *scratch, size_t hlen,
                       const uint8_t *payload, size_t plen, size_t mss, int first, int want)
{
    int k;

    for (k = 0; k < want; k++) {
        size_t off = (size_t)(first + k) * mss;

        iov[2 * k].iov_base = (void *)(scratch + (size_t)(first + k) * hlen);
        iov[2 * k].iov_len = hlen;
        iov[2 * k + 1].iov_base = (void *)(payload + off);
        iov[2 * k + 1].iov_len = plen - off < mss ? plen - off : mss;
    }
}

/* Software GSO on the way out: cut as ns_gso_cut (headers into `scratch`, max_pieces of hlen
 * bytes) and write pieces `skip`.. onwards, each as two iovecs (its header, its slice of the
 * payload where it lies: no copy): one writev per piece (TAP, `mmsg` 0) or sendmmsg in chunks
 * of 64 (AF_PACKET, `mmsg` 1). Returns the pieces done counting `skip` (== skip: EAGAIN before
 * any), or -errno when the first piece tried is refused for good (a later refusal returns
 * the progress; the next call, resuming there, reports it). */
int ns_gso_write(int fd, int mmsg, const uint8_t *hdr, size_t hlen, const uint8_t *payload,
                 size_t plen, size_t mss, int skip, uint8_t *scratch, int max_pieces)
{
    struct iovec iov[128];
    struct mmsghdr msgs[64];
    int pieces = ns_gso_cut(hdr, hlen, payload, plen, mss, scratch, max_pieces);
    int i = skip;

    if (pieces < 0)
        return pieces;
    while (i < pieces) {
        int want = pieces - i, n, k;

        if (want > 64)
            want = 64;
        ns_gso_iov(iov, scratch, hlen, payload, plen, mss, i, want);
        if (mmsg) {
            for (k = 0; k < want; k++) {
                memset(&msgs[k], 0, sizeof(msgs[k]));
                msgs[k].msg_hdr.msg_iov = &iov[2 * k];
                msgs[k].msg_hdr.msg_iovlen = 2;
            }
            n = sendmmsg(fd, msgs, (unsigned int)want, MSG_DONTWAIT);
        } else {
            int counts[64];

            for (k = 0; k < want; k++)
                counts[k] = 2;
            n = ns_write_batch(fd, iov, counts, want);
        }
        if (n < 0) {
            if (mmsg && errno == EINTR)
                continue;
            if (!mmsg)
                errno = -n;
            if (errno == EAGAIN || errno == EWOULDBLOCK || i > skip)
                break;
            return -errno;
        }
        i += n;
        if (n < want)
            break;
    }
    return i;
}

/* io_uring for the TAP writer (issue 10, branch sendoff): the frames of a batch or the pieces
 * of a cut super-segment go to the kernel as IORING_OP_WRITEV requests submitted by ONE
 * io_uring_enter, instead of one writev each. The kernel still builds and receives one skb per
 * frame (netif_receive_skb runs inline, in this call), but the receiver it wakes on our CPU
 * runs once the whole batch is in (at the syscall's return) rather than once per frame:
 * bench/PROFILE.md "Seventh pass". Raw syscalls (no liburing): the ring is three mmaps.
 * RWF_NOWAIT on every request: a write the kernel cannot do at once completes with -EAGAIN
 * instead of going to an io-wq worker, so requests complete in order, inline. */
struct ns_uring {
    int fd;
    unsigned entries;
    unsigned *sq_head, *sq_tail, *sq_mask, *sq_array;
    unsigned *cq_head, *cq_tail, *cq_mask;
    struct io_uring_sqe *sqes;
    struct io_uring_cqe *cqes;
    void *sq_ptr, *cq_ptr;
    size_t sq_len, cq_len, sqes_len;
    int *refused; /* frames refused for good behind one that went (ns_uring_count_refused) */
};

#define NS_URING_BATCH 64 /* requests per io_uring_enter (<= entries) */

/* A ring of `entries` (>= NS_URING_BATCH) submission slots; NULL with *err = -errno when the
 * kernel has no io_uring (ENOSYS), forbids it (EPERM: kernel.io_uring_disabled, seccomp) or
 * lacks what we use (EINVAL). */
void *ns_uring_open(unsigned entries, int *err)
{
    struct io_uring_params p;
    struct ns_uring *r;
    int fd;

    memset(&p, 0, sizeof(p));
    /* SUBMIT_ALL (5.18): a request that fails at submission still consumes its slot and
     * posts its error, so the batch's slots are all consumed (the rest is still handled). */
    p.flags = IORING_SETUP_SUBMIT_ALL;
    fd = (int)syscall(__NR_io_uring_setup, entries, &p);
    if (fd < 0 && errno == EINVAL) {
        memset(&p, 0, sizeof(p));
        fd = (int)syscall(__NR_io_uring_setup, entries, &p);
    }
    if (fd < 0) {
        *err = -errno;
        return NULL;
    }
    r = calloc(1, sizeof(*r));
    if (r == NULL) {
        close(fd);
        *err = -ENOMEM;
        return NULL;
    }
    r->fd = fd;
    r->entries = p.sq_entries;
    r->sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    r->cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    r->sqes_len = p.sq_entries * sizeof(struct io_uring_sqe);
    r->sq_ptr = mmap(NULL, r->sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                     IORING_OFF_SQ_RING);
    r->cq_ptr = mmap(NULL, r->cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                     IORING_OFF_CQ_RING);
    r->sqes = mmap(NULL, r->sqes_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                   IORING_OFF_SQES);
    if (r->sq_ptr == MAP_FAILED || r->cq_ptr == MAP_FAILED || r->sqes == MAP_FAILED ||
        p.sq_entries < NS_URING_BATCH || p.cq_entries < NS_URING_BATCH) {
        *err = r->sq_ptr == MAP_FAILED || r->cq_ptr == MAP_FAILED || r->sqes == MAP_FAILED
                   ? -errno : -EINVAL;
        if (r->sq_ptr != MAP_FAILED) munmap(r->sq_ptr, r->sq_len);
        if (r->cq_ptr != MAP_FAILED) munmap(r->cq_ptr, r->cq_len);
        if (r->sqes != MAP_FAILED) munmap(r->sqes, r->sqes_len);
        close(fd);
        free(r);
        return NULL;
    }
    r->sq_head = (unsigned *)((char *)r->sq_ptr + p.sq_off.head);
    r->sq_tail = (unsigned *)((char *)r->sq_ptr + p.sq_off.tail);
    r->sq_mask = (unsigned *)((char *)r->sq_ptr + p.sq_off.ring_mask);
    r->sq_array = (unsigned *)((char *)r->sq_ptr + p.sq_off.array);
    r->cq_head = (unsigned *)((char *)r->cq_ptr + p.cq_off.head);
    r->cq_tail = (unsigned *)((char *)r->cq_ptr + p.cq_off.tail);
    r->cq_mask = (unsigned *)((char *)r->cq_ptr + p.cq_off.ring_mask);
    r->cqes = (struct io_uring_cqe *)((char *)r->cq_ptr + p.cq_off.cqes);
    return r;
}

void ns_uring_close(void *ring)
{
    struct ns_uring *r = ring;

    if (r == NULL)
        return;
    munmap(r->sqes, r->sqes_len);
    munmap(r->cq_ptr, r->cq_len);
    munmap(r->sq_ptr, r->sq_len);
    close(r->fd);
    free(r);
}

/* Where ns_uring_submit counts the frames it lets go as refused (see there); NULL: nowhere. */
void ns_uring_count_refused(void *ring, int *counter)
{
    ((struct ns_uring *)ring)->refused = counter;
}

/* Submit n (<= NS_URING_BATCH) writev requests of frames to fd (frame k: counts[k] iovecs from
 * iov, consecutive) in one io_uring_enter and reap them. Returns the frames written from the
 * front; -errno when the first failed for good (as ns_write_batch). Frames refused behind one
 * that went are let go and counted (below), never sent twice. */
static int ns_uring_submit(struct ns_uring *r, int fd, const struct iovec *iov,
                           const int *counts, int n)
{
    unsigned tail = *r->sq_tail, mask = *r->sq_mask, head, consumed, ct;
    int k, done, first_err = 0, err = 0;
    unsigned char completed[NS_URING_BATCH];
    int res[NS_URING_BATCH];

    /* completions left by an earlier call that gave up waiting (never, in practice) */
    __atomic_store_n(r->cq_head, __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE),
                     __ATOMIC_RELEASE);
    for (k = 0; k < n; k++) {
        unsigned idx = (tail + (unsigned)k) & mask;
        struct io_uring_sqe *sqe = &r->sqes[idx];

        memset(sqe, 0, sizeof(*sqe));
        sqe->opcode = IORING_OP_WRITEV;
        sqe->fd = fd;
        sqe->addr = (uint64_t)(uintptr_t)iov;
        sqe->len = (unsigned)counts[k];
        sqe->rw_flags = RWF_NOWAIT;
        sqe->user_data = (uint64_t)k;
        r->sq_array[idx] = idx;
        iov += counts[k];
    }
    __atomic_store_n(r->sq_tail, tail + (unsigned)n, __ATOMIC_RELEASE);
    if (syscall(__NR_io_uring_enter, r->fd, (unsigned)n, (unsigned)n, IORING_ENTER_GETEVENTS,
                NULL, 0) < 0)
        err = errno;
    /* Requests the kernel did not take (an error before submission) are taken back: without
     * SQPOLL it reads the tail only in io_uring_enter, so the slots are ours again. */
    consumed = __atomic_load_n(r->sq_head, __ATOMIC_ACQUIRE) - tail;
    if (consumed < (unsigned)n)
        __atomic_store_n(r->sq_tail, tail + consumed, __ATOMIC_RELEASE);
    if (consumed == 0)
        return err ? -err : -EAGAIN;
    /* wait for any completion still missing (none: RWF_NOWAIT requests complete inline) */
    for (;;) {
        ct = __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE);
        if (ct - *r->cq_head >= consumed)
            break;
        if (syscall(__NR_io_uring_enter, r->fd, 0, consumed - (ct - *r->cq_head),
                    IORING_ENTER_GETEVENTS, NULL, 0) < 0 && errno != EINTR)
            break;
    }
    done = (int)consumed;
    ct = __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE);
    memset(completed, 0, sizeof(completed));
    for (head = *r->cq_head; head != ct; head++) {
        struct io_uring_cqe *cqe = &r->cqes[head & *r->cq_mask];
        int i = (int)cqe->user_data;

        if (i < 0 || i >= n)
            continue;
        completed[i] = 1;
        res[i] = cqe->res;
        if (cqe->res < 0 && i < done) {
            done = i;
            first_err = cqe->res;
        }
    }
    /* A request whose completion never came (the wait above failed) is not reported as
     * written: the caller keeps it (never, in practice: RWF_NOWAIT requests complete inline). */
    for (k = 0; k < done; k++)
        if (!completed[k]) {
            done = k;
            first_err = 0;
            break;
        }
    /* Requests are not linked (IOSQE_IO_LINK measured +0.25 us per frame), so frames after a
     * refused one may have gone. Then everything up to the last frame that went counts as
     * done, and the refused frames among them are let go and counted (*refused, folded into
     * the LINK_TX_ERROR drops by the loop): resending from the refused frame would send the
     * later ones twice, out of order. */
    if (done < (int)consumed && first_err != 0) {
        int last_ok = -1, nref = 0, whole = 1;

        for (k = (int)consumed - 1; k > done; k--)
            if (completed[k] && res[k] >= 0) {
                last_ok = k;
                break;
            }
        for (k = done; k < last_ok; k++) {
            if (!completed[k])
                whole = 0;
            else if (res[k] < 0)
                nref++;
        }
        if (last_ok > done && whole) {
            if (r->refused != NULL)
                *r->refused += nref;
            done = last_ok + 1;
            first_err = 0;
        }
    }
    __atomic_store_n(r->cq_head, head, __ATOMIC_RELEASE);
    if (done == 0 && first_err != -EAGAIN && first_err != -EWOULDBLOCK && first_err < 0)
        return first_err;
    return done;
}

/* ns_write_batch through the ring: the same frames, return convention and EAGAIN stop
 * (a batch of one is a plain writev). */
int ns_uring_write_batch(void *ring, int fd, const struct iovec *iov, const int *iov_counts,
                         int n_frames)
{
    struct ns_uring *r = ring;
    int total = 0;

    if (n_frames == 1) /* one frame: a writev is cheaper than a submission and its reaping */
        return ns_write_batch(fd, iov, iov_counts, 1);
    while (total < n_frames) {
        int want = n_frames - total, n, k;
        const struct iovec *at = iov;

        if (want > NS_URING_BATCH)
            want = NS_URING_BATCH;
        n = ns_uring_submit(r, fd, iov, iov_counts + total, want);
        if (n < 0)
            return total ? total : n;
        for (k = 0; k < n; k++)
            at += iov_counts[total + k];
        iov = at;
        total += n;
        if (n < want)
            break;
    }
    return total;
}

/* The TAP writer's choice per batch (the link's tx function with tap_tx uring): a batch of
 * fewer than NS_URING_MIN frames is written by writev, a larger one through the ring. Measured
 * (bench/RESULTS.md run 13): a new connection's batches of ~2 frames cost 30-40 us more per
 * connection through the ring than by writev, while the batches that gain (a cut
 * super-segment, an echo window's replies) are tens of frames. */
#define NS_URING_MIN 8

int ns_tap_write_batch(void *ring, int fd, const struct iovec *iov, const int *iov_counts,
                       int n_frames)
{
    if (n_frames < NS_URING_MIN)
        return ns_write_batch(fd, iov, iov_counts, n_frames);
    return ns_uring_write_batch(ring, fd, iov, iov_counts, n_frames);
}

/* ns_gso_write for a TAP through the ring: the pieces of the cut, up to NS_URING_BATCH per
 * io_uring_enter (a 64 KB super-segment at MSS 1448 is 46 pieces: one call). */
int ns_gso_write_uring(void *ring, int fd, const uint8_t *hdr, size_t hlen,
                       const uint8_t *payload, size_t plen, size_t mss, int skip,
                       uint8_t *scratch, int max_pieces)
{
    struct iovec iov[2 * NS_URING_BATCH];
    int counts[NS_URING_BATCH];
    int pieces = ns_gso_cut(hdr, hlen, payload, plen, mss, scratch, max_pieces);
    int i = skip, k;

    if (pieces < 0)
        return pieces;
    for (k = 0; k < NS_URING_BATCH; k++)
        counts[k] = 2;
    while (i < pieces) {
        int want = pieces - i, n;

        if (want > NS_URING_BATCH)
            want = NS_URING_BATCH;
        ns_gso_iov(iov, scratch, hlen, payload, plen, mss, i, want);
        n = ns_uring_submit(ring, fd, iov, counts, want);
        if (n < 0) {
            if (i > skip || n == -EAGAIN)
                break;
            return n;
        }
        i += n;
        if (n < want)
            break;
    }
    return i;
}

/* Software GRO on the way in, over one receive batch in an arena of `slot_size` slots (frame i
 * is lens[i] bytes at arena + i*slot_size): merge consecutive frames of one TCP flow where
 * Linux's inet_gro_receive / ipv6_gro_receive / tcp_gro_receive would, into the first frame's
 * slot. A piece joins the run when it is to `mac`; IPv4 without options, fragments or
 * padding (same TOS, TTL, DF; consecutive IDs unless DF) or IPv6 with TCP right after the
 * fixed header (same first word and hop limit); the same Ethernet header, addresses and
 * ports; flags ACK or ACK|PSH and nothing else; the same ACK, window, reserved bits and
 * option bytes (so the same TSval); its sequence number where the run ends; its payload not
 * empty, no longer than the first's (gso_size), every earlier piece full; its TCP checksum
 * good; the whole within 65535 bytes of IP datagram. A PSH piece or a short one ends the run;
 * any frame that does not join ends it (order is kept: a frame of another flow in between
 * flushes, as Linux does at the end of a poll). The merged frame is a true super-frame: IP
 * length, IPv4 header checksum, PSH from the last piece, and the TCP checksum over the whole
 * (from the pieces' sums) all made right, so a capture or an ICMP error quoting it sees a
 * wire-valid datagram.
 * Out: m frames (the return value); out_idx[k] its slot, lens[out_idx[k]] its new length,
 * out_gso[k] 0 for a frame left alone, else gso_size | gso_type << 16 | header length << 24
 * (virtio's TCPV4 1 / TCPV6 4; the header length is Ethernet + IP + TCP). */
struct ns_gro_piece {
    size_t l4, thl, plen;
    uint32_t pseudo;
};

/* Can frame f (len bytes) start or join a run? Its payload checksum is checked here: a bad
 * one is never merged (the general path counts its drop as for any frame). Fills p. */
static int ns_gro_candidate(const uint8_t *f, size_t len, const char *mac, struct ns_gro_piece *p)
{
    size_t l4, thl, iplen;
    const uint8_t *t;
    uint8_t proto;

    if (len < 14 + 20 + 20 || memcmp(f, mac, 6) != 0)
        return 0;
    l4 = ns_gso_l4(f, len, &p->pseudo, &proto);
    if (l4 == 0 || proto != 6)
        return 0;
    if (f[12] == 0x08) {
        if (l4 != 34 || ((f[20] & 0x3f) | f[21]) != 0) /* options, MF, fragment offset */
            return 0;
        iplen = ns_be16(f + 16);
        if (iplen + 14 != len || ns_csum_fold(ns_csum_partial(f + 14, 20, 0)) != 0)
            return 0;
    } else {
        iplen = 40 + ns_be16(f + 18);
        if (iplen + 14 != len)
            return 0;
    }
    t = f + l4;
    thl = (size_t)(t[12] >> 4) * 4;
    if (thl < 20 || l4 + thl >= len || (t[13] & ~0x08) != 0x10) /* ACK, maybe PSH: no more */
        return 0;
    p->l4 = l4;
    p->thl = thl;
    p->plen = len - l4 - thl;
    return ns_csum_fold(ns_csum_partial(t, len - l4, p->pseudo + (uint32_t)(len - l4))) == 0;
}

/* Does piece f (a candidate) continue the run led by lead (`got` payload bytes so far,
 * `count` pieces)? */
static int ns_gro_joins(const uint8_t *lead, const struct ns_gro_piece *lp, const uint8_t *f,
                        const struct ns_gro_piece *p, size_t got, int count)
{
    const uint8_t *lt = lead + lp->l4, *t = f + p->l4;

    if (p->l4 != lp->l4 || p->thl != lp->thl || memcmp(lead, f, 14) != 0)
        return 0;
    if (p->plen > lp->plen || lp->l4 + lp->thl + got + p->plen - 14 > 65535)
        return 0;
    if (f[12] == 0x08) {
        /* version/IHL, TOS; DF; TTL, protocol; addresses */
        if (lead[14] != f[14] || lead[15] != f[15] || lead[20] != f[20] || lead[22] != f[22] ||
            lead[23] != f[23] || memcmp(lead + 26, f + 26, 8) != 0)
            return 0;
        if (!(f[20] & 0x40) && ns_be16(f + 18) != ((ns_be16(lead + 18) + (uint32_t)count) & 0xffffu))
            return 0;
    } else if (memcmp(lead + 14, f + 14, 4) != 0 || lead[20] != f[20] || lead[21] != f[21] ||
               memcmp(lead + 22, f + 22, 32) != 0) {
        return 0;
    }
    /* ports; ACK; offset/reserved; window; the options, byte for byte */
    if (memcmp(lt, t, 4) != 0 || memcmp(lt + 8, t + 8, 5) != 0 || memcmp(lt + 14, t + 14, 2) != 0 ||
        memcmp(lt + 20, t + 20, p->thl - 20) != 0)
        return 0;
    if (t[13] != 0x10 && t[13] != 0x18)
        return 0;
    return ns_be32(t + 4) == ((ns_be32(lt + 4) + (uint32_t)got) & 0xffffffffu);
}

/* Finish a run of `count` pieces whose payload sum (as laid out after the leader's header) is
 * `psum`: lengths, IPv4 header checksum, TCP checksum. */
static void ns_gro_finish(uint8_t *lead, const struct ns_gro_piece *lp, size_t got,
                          uint64_t psum, int psh)
{
    uint8_t *t = lead + lp->l4;
    size_t l4len = lp->thl + got;
    uint64_t sum;

    if (lead[12] == 0x08) {
        ns_put16(lead + 16, (uint32_t)(20 + l4len));
        lead[24] = lead[25] = 0;
        ns_put16(lead + 24, ns_csum_fold(ns_csum_partial(lead + 14, 20, 0)));
    } else {
        ns_put16(lead + 18, (uint32_t)l4len);
    }
    if (psh)
        t[13] |= 0x08;
    t[16] = t[17] = 0;
    sum = ns_csum_partial(t, lp->thl, lp->pseudo + (uint32_t)l4len);
    sum += psum; /* both unfolded: add with end-around carry */
    while (sum >> 16)
        sum = (sum & 0xffffu) + (sum >> 16);
    ns_put16(t + 16, ns_csum_fold((uint32_t)sum));
}

/* One's complement sum of a piece's payload as it lands at an even (0) or odd (1) offset. */
static uint32_t ns_gro_psum(const uint8_t *data, size_t len, size_t at)
{
    uint32_t s = ns_csum_partial(data, len, 0);

    s = (s & 0xffffu) + (s >> 16);
    s = (s & 0xffffu) + (s >> 16);
    if (at & 1)
        s = ((s & 0xffu) << 8) | (s >> 8);
    return s;
}

int ns_gro_merge(uint8_t *arena, size_t slot_size, uint32_t *lens, int n, const char *mac,
                 uint32_t *out_idx, uint32_t *out_gso)
{
    struct ns_gro_piece lp = {0, 0, 0, 0}, p = {0, 0, 0, 0};
    int m = 0, lead = -1, count = 0, open = 0, psh = 0;
    size_t got = 0;
    uint64_t psum = 0;

    for (int i = 0; i <= n; i++) {
        uint8_t *f = i < n ? arena + (size_t)i * slot_size : NULL;
        size_t len = i < n ? lens[i] : 0;
        int cand = f != NULL && len < slot_size && ns_gro_candidate(f, len, mac, &p);
        uint8_t *lf = lead >= 0 ? arena + (size_t)lead * slot_size : NULL;

        if (open && cand && lens[lead] + p.plen <= slot_size &&
            ns_gro_joins(lf, &lp, f, &p, got, count)) {
            memcpy(lf + lens[lead], f + p.l4 + p.thl, p.plen);
            psum += ns_gro_psum(f + p.l4 + p.thl, p.plen, got);
            got += p.plen;
            lens[lead] += (uint32_t)p.plen;
            count++;
            psh = (f[p.l4 + 13] & 0x08) != 0;
            open = !psh && p.plen == lp.plen;
            continue;
        }
        if (lead >= 0 && count > 1) { /* close the run before this frame */
            ns_gro_finish(lf, &lp, got, psum, psh);
            out_gso[m - 1] = (uint32_t)lp.plen | (uint32_t)(lf[12] == 0x08 ? 1 : 4) << 16 |
                             (uint32_t)(lp.l4 + lp.thl) << 24;
        }
        lead = -1;
        open = 0;
        if (i == n)
            break;
        out_idx[m] = (uint32_t)i;
        out_gso[m] = 0;
        m++;
        if (cand && !(f[p.l4 + 13] & 0x08)) { /* a PSH frame ends a run before it starts */
            lead = i;
            lp = p;
            got = p.plen;
            count = 1;
            psh = 0;
            open = 1;
            psum = ns_gro_psum(f + p.l4 + p.thl, p.plen, 0);
        }
    }
    return m;
}

/* The UDP echo's reply in one call (proto/udp.py, UdpEngine._reflect): `eth` (the 14-byte
 * Ethernet header towards the next hop), an IPv4 header without options from `src` to `dst`
 * (tos 0, no fragmentation flags, `ident`, `ttl`, its checksum), then the request's UDP
 * datagram (`udp`, `udp_len` bytes: its length field) with the ports swapped. Swapping the
 * ports and the addresses changes no sum, so the request's UDP checksum is the reply's. The
 * same bytes Ipv4Engine.send builds from (eth, header, udp header, payload), one piece
 * instead of four. Returns the frame's length, or -1 when it does not fit `out`. */
int ns_udp_reflect(const uint8_t *udp, size_t udp_len, const uint8_t *eth, uint32_t src,
                   uint32_t dst, uint32_t ident, uint32_t ttl, uint8_t *out, size_t out_size)
{
    size_t total = 20 + udp_len, i;
    uint32_t s;
    uint8_t *ip = out + 14, *u = out + 34;

    if (udp_len < 8 || total > 0xFFFF || 14 + total > out_size)
        return -1;
    memcpy(out, eth, 14);
    ip[0] = 0x45;
    ip[1] = 0;
    ns_put16(ip + 2, (uint32_t)total);
    ns_put16(ip + 4, ident & 0xFFFF);
    ip[6] = ip[7] = 0;
    ip[8] = (uint8_t)ttl;
    ip[9] = 17;
    ip[10] = ip[11] = 0;
    ns_put32(ip + 12, src);
    ns_put32(ip + 16, dst);
    s = 0;
    for (i = 0; i < 20; i += 2)
        s += ns_be16(ip + i);
    s = (s & 0xFFFF) + (s >> 16);
    s = (s & 0xFFFF) + (s >> 16);
    ns_put16(ip + 10, ~s & 0xFFFF);
    memcpy(u, udp + 2, 2);
    memcpy(u + 2, udp, 2);
    memcpy(u + 4, udp + 4, udp_len - 4);
    return (int)(14 + total);
}


/* A peer whose echo replies need only a header Python vouched for (Host._echo_batch):
 * `eth` the ready Ethernet header towards its next hop; used/last are outputs. */
struct ns_echo_peer {
    uint32_t ip;
    uint8_t eth[14];
    uint32_t used;
    int32_t last;
};

/* The UDP echo of a receive batch in one call (proto/host.py, Host._echo_batch): from frame
 * `start` of the n in the arena (frame i at arena + i * slot_size + hlen, lens[i] - hlen bytes;
 * `valid`, when not NULL, says per frame that the link vouched for its L4 checksum, as
 * ns_rx_fast_v's l4_valid), take each frame that the per-frame path would reflect with nothing
 * but a header Python vouched for: ns_rx_fast_v's checks, UDP to `port` with a non-zero
 * checksum, from a peer in `peers` (its ready Ethernet header), a reply within `mtu`. Each
 * reply is written into `out` exactly as ns_udp_reflect writes it (ident = ident + k for the
 * k-th), offs[k]..offs[k + 1] its bytes; peers[j].used / .last say how many replies went to
 * peer j and the index of the last one's frame. Stops at the first frame it cannot take (or
 * when `out` is full): returns its index (n when all were taken); *rx_bytes gets the taken
 * frames' length without the header. Everything else, counters included, is Python's. */
int ns_udp_echo_batch(const uint8_t *arena, size_t slot_size, size_t hlen, const uint32_t *lens,
                      const uint8_t *valid, int start, int n, const char *mac, uint32_t addr,
                      uint32_t bcast, uint32_t port, struct ns_echo_peer *peers, int npeers,
                      uint32_t mtu, uint32_t ident, uint32_t ttl, uint8_t *out, size_t out_size,
                      uint32_t *offs, uint64_t *rx_bytes)
{
    size_t used = 0;
    uint64_t bytes = 0;
    int i, j, k = 0, w;

    offs[0] = 0;
    for (i = start; i < n; i++) {
        const uint8_t *f = arena + (size_t)i * slot_size + hlen, *udp = f + 34;
        size_t len = lens[i];
        uint32_t r, ulen, src;

        if (len >= slot_size || len < hlen)
            break;
        len -= hlen;
        r = ns_rx_fast_v(f, len, mac, addr, bcast, valid != NULL && valid[i] != 0);
        if ((r & 0xff) != 17)
            break;
        ulen = ns_be16(udp + 4);
        if (ns_be16(udp + 2) != port || (udp[6] | udp[7]) == 0 || 20 + ulen > mtu)
            break;
        src = ns_be32(f + 26);
        for (j = 0; j < npeers && peers[j].ip != src; j++)
            ;
        if (j == npeers)
            break;
        w = ns_udp_reflect(udp, ulen, peers[j].eth, addr, src, ident + (uint32_t)k, ttl,
                           out + used, out_size - used);
        if (w < 0)
            break;
        peers[j].used++;
        peers[j].last = i;
        used += (size_t)w;
        offs[++k] = (uint32_t)used;
        bytes += len;
    }
    *rx_bytes = bytes;
    return i;
}

/* ns_udp_echo_batch for a link with USO (proto/udp.py's echo runs): the same frames taken
 * (any peer: a run's header is built at its flush, in Python), but no reply written; instead
 * each taken request's payload is copied into `out`, and consecutive requests with the same
 * (source, source port, UDP length) form a segment: segs[4 k ..] = first frame, count,
 * source, source port << 16 | UDP length. Frames whose replies a run cannot carry (no
 * payload, a datagram above `mtu`) stop it as well. Returns the stop index as
 * ns_udp_echo_batch; *nsegs the segments, *rx_bytes as there. */
int ns_udp_echo_runs(const uint8_t *arena, size_t slot_size, size_t hlen, const uint32_t *lens,
                     const uint8_t *valid, int start, int n, const char *mac, uint32_t addr,
                     uint32_t bcast, uint32_t port, uint32_t mtu, uint8_t *out, size_t out_size,
                     uint32_t *segs, int max_segs, int *nsegs, uint64_t *rx_bytes)
{
    size_t used = 0;
    uint64_t bytes = 0;
    int i, k = -1;
    uint32_t *seg = NULL;

    for (i = start; i < n; i++) {
        const uint8_t *f = arena + (size_t)i * slot_size + hlen, *udp = f + 34;
        size_t len = lens[i];
        uint32_t r, ulen, src, sp;

        if (len >= slot_size || len < hlen)
            break;
        len -= hlen;
        r = ns_rx_fast_v(f, len, mac, addr, bcast, valid != NULL && valid[i] != 0);
        if ((r & 0xff) != 17)
            break;
        ulen = ns_be16(udp + 4);
        if (ns_be16(udp + 2) != port || (udp[6] | udp[7]) == 0 || ulen <= 8 || 20 + ulen > mtu ||
            used + ulen - 8 > out_size)
            break;
        src = ns_be32(f + 26);
        sp = (ns_be16(udp) << 16) | ulen;
        if (seg == NULL || seg[2] != src || seg[3] != sp) {
            if (k + 1 >= max_segs)
                break;
            seg = segs + 4 * ++k;
            seg[0] = (uint32_t)i;
            seg[1] = 0;
            seg[2] = src;
            seg[3] = sp;
        }
        seg[1]++;
        memcpy(out + used, udp + 8, ulen - 8);
        used += ulen - 8;
        bytes += len;
    }
    *nsegs = k + 1;
    *rx_bytes = bytes;
    return i;
}

/* The first frame from `start` that may be a UDP echo request to `port` at `addr` (IPv4 with a
 * 20-byte header, UDP, to that address and port: what ns_udp_echo_batch / _runs require, before
 * any checksum), or n. Host._echo_batch hands the frames before it to the per-frame path
 * without asking for the peers' headers or calling those (a TCP stream's frames cost it one
 * look each here, not a run start each). */
int ns_udp_echo_scan(const uint8_t *arena, size_t slot_size, size_t hlen, const uint32_t *lens,
                     int start, int n, uint32_t addr, uint32_t port)
{
    int i;

    for (i = start; i < n; i++) {
        const uint8_t *f = arena + (size_t)i * slot_size + hlen;
        size_t len = lens[i];

        if (len >= slot_size || len < hlen + 42)
            continue;
        if (f[12] == 0x08 && f[13] == 0x00 && f[14] == 0x45 && f[23] == 17 &&
            ns_be32(f + 30) == addr && ns_be16(f + 36) == port)
            return i;
    }
    return n;
}

/* The pure ACKs of a receive batch and their runs (proto/host.py Host._ack_batch; ACK filtering,
 * proto/tcp/connection.py ACK_HOLD). pure[i] = 1 for frame i (after hlen bytes of virtio-net
 * header in slot i of the arena) when ns_rx_fast accepts it as a TCP segment to `addr` (its
 * every check: the MAC, a 20-byte IPv4 header with a true checksum, not a fragment, a sane
 * source, the TCP checksum, always summed here) and it is exactly 66 bytes: 52 of IPv4, a
 * 32-byte TCP header whose options are NOP NOP Timestamps (what wire/tcp.py parses on its
 * fast case), flags exactly ACK, no payload; Python then reads it at fixed offsets. These are
 * grouped per flow into runs the host may take at once. Within a run every member
 * after the first is a pure ACK of the same flow whose sequence number equals the first's,
 * whose ACK rises strictly over the member before and whose TSval does not fall, both spans
 * from the first member below 2^31: so each member would replace the one before it as the
 * held ACK (connection.py _ack_supersedes) exactly when the last would replace the first.
 * A run ends at any frame of its flow that is not such a member, and every run ends at any
 * frame that is not a TCP segment ns_rx_fast accepts (an ICMP error may release a held ACK,
 * a DHCP reply may move the address: nothing between a run's members may touch its
 * connection). Out, for runs of three members or more: head[i] = the index of the run's last
 * member | the run's length << 16 for its first member i (else -1; n < 32768), member[i] =
 * first + 1 for its later members (else 0), wnd[i] = the largest raw window among the run's
 * members but the last. Returns the number of pure ACKs marked. */
#define NS_RUN_FLOWS 8
struct ns_ack_run {
    uint8_t key[12];
    int first, second, last, count;
    uint32_t seq, ack0, ack, ts0, ts;
    uint16_t wnd, last_wnd;
};

static void ns_run_end(struct ns_ack_run *r, int32_t *head, int32_t *member, uint16_t *wnd)
{
    if (r->count >= 3) {
        head[r->first] = r->last | (r->count << 16);
        wnd[r->first] = r->wnd;
    } else if (r->count == 2) {
        member[r->second] = 0;
    }
    r->count = 0;
}

int ns_ack_runs(const uint8_t *arena, size_t slot_size, size_t hlen, const uint32_t *lens, int n,
                const char *mac, uint32_t addr, uint32_t bcast, uint8_t *pure_out, int32_t *head,
                int32_t *member, uint16_t *wnd)
{
    static const uint8_t nop_nop_ts[4] = {1, 1, 8, 10};
    struct ns_ack_run runs[NS_RUN_FLOWS];
    int i, k, m = 0, nruns = 0;

    for (i = 0; i < n; i++) {
        const uint8_t *f = arena + (size_t)i * slot_size + hlen;
        size_t len = lens[i] >= hlen ? lens[i] - hlen : 0;
        uint32_t r = len >= 34 && lens[i] < slot_size ? ns_rx_fast_v(f, len, mac, addr, bcast, 0) : 0;
        struct ns_ack_run *run = NULL;
        int pure;

        head[i] = -1;
        member[i] = 0;
        wnd[i] = 0;
        pure_out[i] = 0;
        if ((r & 0xff) != 6) { /* not a TCP segment the fast path takes: every run ends */
            for (k = 0; k < nruns; k++)
                ns_run_end(&runs[k], head, member, wnd);
            nruns = 0;
            continue;
        }
        pure = len == 66 && r == ((52u << 8) | 6u) && (f[46] >> 4) == 8 && f[47] == 0x10 &&
               memcmp(f + 54, nop_nop_ts, 4) == 0;
        m += pure;
        pure_out[i] = (uint8_t)pure;
        for (k = 0; k < nruns; k++)
            if (memcmp(runs[k].key, f + 26, 12) == 0) {
                run = &runs[k];
                break;
            }
        if (pure) {
            uint32_t seq = ns_be32(f + 38), ack = ns_be32(f + 42), ts = ns_be32(f + 58);
            uint16_t w = (uint16_t)ns_be16(f + 48);

            if (run != NULL && run->count > 0 && seq == run->seq && ack - run->ack - 1 < 0x7fffffffu &&
                ack - run->ack0 < 0x80000000u && ts - run->ts < 0x80000000u &&
                ts - run->ts0 < 0x80000000u) {
                if (run->last_wnd > run->wnd)
                    run->wnd = run->last_wnd;
                if (run->count == 1)
                    run->second = i;
                run->count++;
                run->last = i;
                run->ack = ack;
                run->ts = ts;
                run->last_wnd = w;
                member[i] = run->first + 1;
                continue;
            }
            if (run == NULL) {
                if (nruns == NS_RUN_FLOWS)
                    continue; /* too many flows in one batch: this one takes no run */
                run = &runs[nruns++];
                memcpy(run->key, f + 26, 12);
            } else {
                ns_run_end(run, head, member, wnd);
            }
            run->first = run->last = i;
            run->count = 1;
            run->seq = seq;
            run->ack0 = run->ack = ack;
            run->ts0 = run->ts = ts;
            run->wnd = 0;
            run->last_wnd = w;
        } else if (run != NULL) {
            ns_run_end(run, head, member, wnd); /* another segment of the flow */
        }
    }
    for (k = 0; k < nruns; k++)
        ns_run_end(&runs[k], head, member, wnd);
    return m;
}
