/* Kernel-stack UDP echo server for bench/run.py: the kernel's own capability as a baseline.
 *
 *   udpecho PORT MAX_SECONDS
 *
 * recvmmsg (up to 64 datagrams, MSG_WAITFORONE) then sendmmsg of the same buffers back to
 * their senders. Exits on SIGTERM/SIGINT or after MAX_SECONDS (alarm), printing its count.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BATCH 64
#define BUF 9216

static volatile sig_atomic_t stop;

static void on_signal(int sig) { (void)sig; stop = 1; }

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s PORT MAX_SECONDS\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]);
    int max_seconds = atoi(argv[2]);
    if (port < 1 || port > 65535 || max_seconds < 1 || max_seconds > 600) {
        fprintf(stderr, "udpecho: argument out of range\n");
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: recvmmsg returns EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGALRM, &sa, NULL);
    alarm((unsigned)max_seconds);

    /* one dual-stack socket (IPV6_V6ONLY off) answers IPv4 and IPv6: bench/v6.py compares them */
    int fd = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) { perror("socket"); return 1; }
    int buf = 4 << 20;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &buf, sizeof buf) < 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
    int off = 0;
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
    struct sockaddr_in6 addr = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port),
                                .sin6_addr = IN6ADDR_ANY_INIT};
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) { perror("bind"); return 1; }
    printf("ready\n");
    fflush(stdout);

    static uint8_t bufs[BATCH][BUF];
    struct sockaddr_in6 peers[BATCH];
    struct iovec iov[BATCH];
    struct mmsghdr msgs[BATCH];
    uint64_t echoed = 0;
    while (!stop) {
        memset(msgs, 0, sizeof msgs);
        for (int i = 0; i < BATCH; i++) {
            iov[i].iov_base = bufs[i];
            iov[i].iov_len = BUF;
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_name = &peers[i];
            msgs[i].msg_hdr.msg_namelen = sizeof peers[i];
        }
        int n = recvmmsg(fd, msgs, BATCH, MSG_WAITFORONE, NULL);
        if (n <= 0)
            continue; /* EINTR (stop is then set) or a transient error */
        for (int i = 0; i < n; i++)
            iov[i].iov_len = msgs[i].msg_len;
        int done = 0;
        for (int tries = 0; done < n && tries < 16 && !stop; tries++) {
            int m = sendmmsg(fd, msgs + done, (unsigned)(n - done), 0);
            if (m > 0)
                done += m;
            else if (m < 0 && errno != EINTR && errno != EAGAIN && errno != ENOBUFS)
                break;
        }
        echoed += (uint64_t)done;
    }
    printf("echoed %llu\n", (unsigned long long)echoed);
    return 0;
}
