/* TCP load client for bench/tcp.py: bulk send / receive, 64-byte echo RTT, connect rate.
 *
 *   tcpclient send HOST PORT SECONDS MAX_BYTES    write until time or bytes, half-close, wait EOF
 *   tcpclient recv HOST PORT SECONDS MAX_BYTES    read until time or bytes
 *   tcpclient rtt  HOST PORT SECONDS MAX_COUNT SIZE   one message in flight (TCP_NODELAY)
 *   tcpclient conn HOST PORT SECONDS MAX_COUNT    connect()+close() loop, one at a time
 *
 * Every mode stops at SECONDS or at its count, whichever comes first, and prints one JSON line.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void cpu(double *user, double *sys) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    *user = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6;
    *sys = ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
}

static socklen_t addr_len;

static int dial(struct sockaddr_storage *addr) {
    int fd = socket(addr->ss_family, SOCK_STREAM, 0);
    if (fd < 0) { perror("socket"); exit(1); }
    if (connect(fd, (struct sockaddr *)addr, addr_len) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: %s send|recv|rtt|conn HOST PORT SECONDS MAX [SIZE]\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    const char *mode = argv[1];
    /* IPv4 or IPv6, by the address's form (bench/v6.py compares the two) */
    struct sockaddr_storage addr = {0};
    struct sockaddr_in *a4 = (struct sockaddr_in *)&addr;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&addr;
    if (inet_pton(AF_INET, argv[2], &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons(atoi(argv[3]));
        addr_len = sizeof *a4;
    } else if (inet_pton(AF_INET6, argv[2], &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons(atoi(argv[3]));
        addr_len = sizeof *a6;
    } else {
        fprintf(stderr, "bad address %s\n", argv[2]);
        return 2;
    }
    double seconds = atof(argv[4]);
    long long max = atoll(argv[5]);
    double u0, s0, u1, s1;
    cpu(&u0, &s0);
    double start = now(), end = start + seconds;

    if (!strcmp(mode, "send") || !strcmp(mode, "recv")) {
        int fd = dial(&addr);
        if (fd < 0) { perror("connect"); return 1; }
        static char buf[1 << 18];
        memset(buf, 'x', sizeof buf);
        long long total = 0;
        int sending = !strcmp(mode, "send");
        start = now(); end = start + seconds;
        while (total < max && now() < end) {
            long long want = max - total < (long long)sizeof buf ? max - total : (long long)sizeof buf;
            ssize_t n = sending ? write(fd, buf, want) : read(fd, buf, want);
            if (n <= 0) { if (n < 0 && errno == EINTR) continue; break; }
            total += n;
        }
        double data_end = now();
        if (sending) {  /* the peer has it all once its FIN follows ours (discard closes after) */
            shutdown(fd, SHUT_WR);
            while (read(fd, buf, sizeof buf) > 0) {}
        }
        double fin = now();
        close(fd);
        cpu(&u1, &s1);
        double elapsed = (sending ? fin : data_end) - start;
        printf("{\"mode\":\"%s\",\"bytes\":%lld,\"elapsed_s\":%.4f,\"mb_per_s\":%.2f,"
               "\"cpu_user_s\":%.3f,\"cpu_sys_s\":%.3f}\n",
               mode, total, elapsed, total / elapsed / 1e6, u1 - u0, s1 - s0);
        return 0;
    }
    if (!strcmp(mode, "rtt")) {
        int size = argc > 6 ? atoi(argv[6]) : 64;
        if (size < 1 || size > 65536) size = 64;
        int fd = dial(&addr);
        if (fd < 0) { perror("connect"); return 1; }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        char *msg = calloc(1, size), *got = calloc(1, size);
        double *rtt = calloc(max > 0 ? max : 1, sizeof(double));
        long long n = 0;
        for (int warm = 0; warm < 50; warm++) {  /* first exchanges: ARP, cwnd, caches */
            if (write(fd, msg, size) != size) return 1;
            for (int r = 0; r < size;) { ssize_t k = read(fd, got + r, size - r); if (k <= 0) return 1; r += k; }
        }
        start = now(); end = start + seconds;
        while (n < max && now() < end) {
            double t0 = now();
            if (write(fd, msg, size) != size) break;
            int r = 0;
            while (r < size) { ssize_t k = read(fd, got + r, size - r); if (k <= 0) break; r += k; }
            if (r < size) break;
            rtt[n++] = (now() - t0) * 1e6;
        }
        double elapsed = now() - start;
        close(fd);
        cpu(&u1, &s1);
        qsort(rtt, n, sizeof(double), cmp_double);
        double sum = 0;
        for (long long i = 0; i < n; i++) sum += rtt[i];
#define P(p) (n ? rtt[(long long)((p) / 100.0 * n) < n ? (long long)((p) / 100.0 * n) : n - 1] : 0)
        printf("{\"mode\":\"rtt\",\"count\":%lld,\"size\":%d,\"elapsed_s\":%.4f,\"avg_us\":%.1f,"
               "\"min_us\":%.1f,\"p50_us\":%.1f,\"p99_us\":%.1f,\"max_us\":%.1f,"
               "\"cpu_user_s\":%.3f,\"cpu_sys_s\":%.3f}\n",
               n, size, elapsed, n ? sum / n : 0, n ? rtt[0] : 0, P(50), P(99), n ? rtt[n - 1] : 0,
               u1 - u0, s1 - s0);
        return 0;
    }
    if (!strcmp(mode, "conn")) {
        long long ok = 0, failed = 0;
        while (ok + failed < max && now() < end) {
            int fd = dial(&addr);
            if (fd < 0) { failed++; continue; }
            close(fd);
            ok++;
        }
        double elapsed = now() - start;
        cpu(&u1, &s1);
        printf("{\"mode\":\"conn\",\"connections\":%lld,\"failed\":%lld,\"elapsed_s\":%.4f,"
               "\"per_s\":%.1f,\"cpu_user_s\":%.3f,\"cpu_sys_s\":%.3f}\n",
               ok, failed, elapsed, ok / elapsed, u1 - u0, s1 - s0);
        return 0;
    }
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
}
