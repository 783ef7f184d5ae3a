/* The kernel-side baseline for bench/tcp.py: echo (7), discard (9) and chargen (19) over TCP,
 * one epoll thread, non-blocking sockets. Exits after LIFETIME seconds.
 *
 *   tcpserv LIFETIME      prints "ready" once listening
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { ECHO = 7, DISCARD = 9, CHARGEN = 19, MAXFD = 65536 };
static char kind[MAXFD];     /* per fd: 0 unused, 'l' listener, 'e'/'d'/'c' connections */
static int lport[MAXFD];     /* listener fd -> its port */
static long long coff[MAXFD]; /* chargen: stream offset */
static char pattern[95 * 74 * 20]; /* whole periods: any 64 KiB slice from offset < period */

static int listen_on(int port) {
    /* dual-stack (IPV6_V6ONLY off): IPv4 and IPv6 clients alike, for bench/v6.py */
    int fd = socket(AF_INET6, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1, off = 0;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons(port),
                             .sin6_addr = IN6ADDR_ANY_INIT};
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 4096) < 0) {
        perror("listen");
        exit(1);
    }
    return fd;
}

int main(int argc, char **argv) {
    int lifetime = argc > 1 ? atoi(argv[1]) : 60;
    signal(SIGPIPE, SIG_IGN); /* a client that leaves mid-write is an EPIPE, not our death */
    int period = 95 * 74;
    for (int line = 0; line < 95; line++) {
        for (int k = 0; k < 72; k++) pattern[line * 74 + k] = 0x20 + (line + k) % 95;
        pattern[line * 74 + 72] = '\r';
        pattern[line * 74 + 73] = '\n';
    }
    for (int i = period; i < (int)sizeof pattern; i++) pattern[i] = pattern[i % period];
    int ep = epoll_create1(0);
    int ports[] = {ECHO, DISCARD, CHARGEN};
    for (int i = 0; i < 3; i++) {
        int fd = listen_on(ports[i]);
        kind[fd] = 'l';
        lport[fd] = ports[i];
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }
    printf("ready\n");
    fflush(stdout);
    static char buf[1 << 18];
    struct epoll_event evs[256];
    time_t end = time(NULL) + lifetime;
    while (time(NULL) < end) {
        int n = epoll_wait(ep, evs, 256, 500);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (kind[fd] == 'l') {
                int c;
                while ((c = accept4(fd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    if (c >= MAXFD) { close(c); continue; }
                    int p = lport[fd];
                    kind[c] = p == ECHO ? 'e' : p == DISCARD ? 'd' : 'c';
                    coff[c] = 0;
                    int one = 1;
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    uint32_t events = EPOLLIN | (kind[c] == 'c' ? EPOLLOUT : 0);
                    struct epoll_event ev = {.events = events, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
                }
                continue;
            }
            int done = 0;
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                for (;;) {
                    ssize_t r = read(fd, buf, sizeof buf);
                    if (r == 0) { done = 1; break; }
                    if (r < 0) { if (errno != EAGAIN) done = 1; break; }
                    if (kind[fd] == 'e') {  /* blocking-ish echo: small messages in the bench */
                        ssize_t off = 0;
                        while (off < r) {
                            ssize_t w = write(fd, buf + off, r - off);
                            if (w < 0) { if (errno == EAGAIN) continue; done = 1; break; }
                            off += w;
                        }
                    }
                }
            }
            if (!done && kind[fd] == 'c' && (evs[i].events & EPOLLOUT)) {
                for (;;) {
                    int start = coff[fd] % period;
                    ssize_t w = write(fd, pattern + start, 1 << 16);
                    if (w < 0) { if (errno != EAGAIN) done = 1; break; }
                    coff[fd] += w;
                }
            }
            if (done) {
                epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
                close(fd);
                kind[fd] = 0;
            }
        }
    }
    return 0;
}
