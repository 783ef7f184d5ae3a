/* Microbench (branch udpoff, bench/PROFILE.md "Fifth pass"): CPU per frame for TAP writes,
 * one writev() each against one io_uring_enter per batch of IORING_OP_WRITEV, and for TAP reads,
 * read() each (plus the EAGAIN that ends a batch) against a batch of IORING_OP_READ. The frames
 * are 64-byte UDP datagrams delivered to a bound socket on the kernel side, as the echo's replies
 * are. Needs liburing (apt: liburing-dev), root, and a TAP inside a test namespace:
 *
 *   gcc -O2 -o /tmp/uring_tap bench/uring_tap.c -luring
 *   ip netns add ub && ip -n ub tuntap add dev tapb mode tap
 *   ip -n ub addr add 192.0.2.1/24 dev tapb && ip -n ub link set tapb up
 *   ip netns exec ub sysctl -qw net.ipv6.conf.tapb.disable_ipv6=1
 *   ip -n ub neigh add 192.0.2.2 lladdr 02:00:00:00:00:02 dev tapb nud permanent
 *   ip netns exec ub /tmp/uring_tap tapb 2000 64      # ROUNDS BATCH
 *   ip netns del ub
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <liburing.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static double wall_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint16_t csum(const uint8_t *p, size_t n, uint32_t s)
{
    for (size_t i = 0; i + 1 < n; i += 2) s += (p[i] << 8) | p[i + 1];
    if (n & 1) s += p[n - 1] << 8;
    while (s >> 16) s = (s & 0xffff) + (s >> 16);
    return (uint16_t)~s;
}

static uint8_t frame[14 + 20 + 8 + 64];
static size_t frame_len = sizeof frame;

static void build_frame(const uint8_t *dst_mac)
{
    uint8_t *e = frame, *ip = frame + 14, *udp = ip + 20;
    memcpy(e, dst_mac, 6);
    memcpy(e + 6, "\x02\x00\x00\x00\x00\x02", 6);
    e[12] = 0x08; e[13] = 0x00;
    ip[0] = 0x45; ip[2] = 0; ip[3] = 20 + 8 + 64; ip[8] = 64; ip[9] = 17;
    memcpy(ip + 12, "\xc0\x00\x02\x02", 4);
    memcpy(ip + 16, "\xc0\x00\x02\x01", 4);
    uint16_t c = csum(ip, 20, 0);
    ip[10] = c >> 8; ip[11] = c & 0xff;
    udp[0] = 0x30; udp[1] = 0x39; udp[2] = 0x23; udp[3] = 0x28; /* 12345 -> 9000 */
    udp[4] = 0; udp[5] = 72;
    memset(udp + 8, 'x', 64);
    /* UDP checksum 0: none (allowed over IPv4) */
}

static int tap_open(const char *name)
{
    struct ifreq ifr;
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK);
    if (fd < 0) { perror("tun"); exit(1); }
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) { perror("TUNSETIFF"); exit(1); }
    return fd;
}

static int sink;  /* the kernel-side UDP socket the frames are delivered to */

static void drain(void)
{
    char buf[2048];
    while (recv(sink, buf, sizeof buf, MSG_DONTWAIT) > 0) {}
}

static int feeder;  /* a kernel-side socket sending to 192.0.2.2 through the TAP */

static void feed(int n)
{
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(7)};
    inet_pton(AF_INET, "192.0.2.2", &to.sin_addr);
    char payload[64];
    memset(payload, 'y', sizeof payload);
    for (int i = 0; i < n; i++)
        if (sendto(feeder, payload, sizeof payload, 0, (struct sockaddr *)&to, sizeof to) < 0) {
            perror("sendto"); exit(1);
        }
}

int main(int argc, char **argv)
{
    if (argc < 4) { fprintf(stderr, "usage: %s TAP ROUNDS BATCH\n", argv[0]); return 2; }
    setvbuf(stdout, NULL, _IONBF, 0);
    int rounds = atoi(argv[2]), batch = atoi(argv[3]);
    int fd = tap_open(argv[1]);
    /* the TAP's own MAC: the kernel side */
    struct ifreq ifr;
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, argv[1], IFNAMSIZ - 1);
    if (ioctl(s, SIOCGIFHWADDR, &ifr) < 0) { perror("hwaddr"); return 1; }
    build_frame((uint8_t *)ifr.ifr_hwaddr.sa_data);
    sink = socket(AF_INET, SOCK_DGRAM, 0);
    int big = 64 << 20;
    setsockopt(sink, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(9000)};
    bind(sink, (struct sockaddr *)&a, sizeof a);
    feeder = s;
    setsockopt(feeder, SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof big);

    struct io_uring ring;
    int rc = io_uring_queue_init(256, &ring, 0);
    if (rc < 0) { fprintf(stderr, "io_uring_queue_init: %s\n", strerror(-rc)); return 1; }
    struct iovec iov = {frame, frame_len};

    for (int pass = 0; pass < 2; pass++) {
        /* --- writes */
        double c0, w0, cw = 0, cu = 0, ww = 0, wu = 0;
        long n = 0;
        for (int r = 0; r < rounds; r++) {
            c0 = cpu_s(); w0 = wall_s();
            for (int i = 0; i < batch; i++)
                if (writev(fd, &iov, 1) < 0) { perror("writev"); return 1; }
            cw += cpu_s() - c0; ww += wall_s() - w0;
            drain();
            c0 = cpu_s(); w0 = wall_s();
            for (int i = 0; i < batch; i++) {
                struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
                io_uring_prep_writev(sqe, fd, &iov, 1, 0);
            }
            io_uring_submit(&ring);
            for (int i = 0; i < batch; i++) {
                struct io_uring_cqe *cqe;
                if (io_uring_wait_cqe(&ring, &cqe) < 0 || cqe->res < 0) {
                    fprintf(stderr, "uring write: %d\n", cqe ? cqe->res : 0); return 1;
                }
                io_uring_cqe_seen(&ring, cqe);
            }
            cu += cpu_s() - c0; wu += wall_s() - w0;
            drain();
            n += batch;
        }
        printf("write  batch %3d: writev %.3f us cpu (%.3f wall) per frame; io_uring %.3f us cpu (%.3f wall)  saving %.0f %%\n",
               batch, cw / n * 1e6, ww / n * 1e6, cu / n * 1e6, wu / n * 1e6, 100 * (1 - cu / cw));

        /* --- reads: the kernel queues `batch` frames on the TAP, then we read them */
        static uint8_t bufs[256][2048];
        cw = cu = ww = wu = 0;
        n = 0;
        for (int r = 0; r < rounds; r++) {
            feed(batch);
            usleep(200);
            c0 = cpu_s(); w0 = wall_s();
            int got = 0;
            for (;;) {
                ssize_t k = read(fd, bufs[got % 256], 2048);
                if (k < 0) break;
                got++;
            }
            cw += cpu_s() - c0; ww += wall_s() - w0;
            if (got < batch) fprintf(stderr, "read: only %d\n", got);
            feed(batch);
            usleep(200);
            c0 = cpu_s(); w0 = wall_s();
            for (int i = 0; i < batch; i++) {
                struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
                io_uring_prep_read(sqe, fd, bufs[i % 256], 2048, 0);
            }
            io_uring_submit(&ring);
            int done = 0, eagain = 0;
            while (done < batch) {
                struct io_uring_cqe *cqe;
                if (io_uring_wait_cqe(&ring, &cqe) < 0) return 1;
                if (cqe->res == -EAGAIN) eagain++;
                io_uring_cqe_seen(&ring, cqe);
                done++;
            }
            cu += cpu_s() - c0; wu += wall_s() - w0;
            if (eagain) fprintf(stderr, "uring read: %d EAGAIN\n", eagain);
            { char b[2048]; while (read(fd, b, sizeof b) > 0) {} }
            n += batch;
        }
        printf("read   batch %3d: read   %.3f us cpu (%.3f wall) per frame; io_uring %.3f us cpu (%.3f wall)  saving %.0f %%\n",
               batch, cw / n * 1e6, ww / n * 1e6, cu / n * 1e6, wu / n * 1e6, 100 * (1 - cu / cw));
    }
    return 0;
}
