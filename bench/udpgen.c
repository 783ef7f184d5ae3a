/* UDP echo load generator for bench/run.py (compiled by it at run time into a temp dir).
 *
 *   udpgen DST_IP PORT DURATION_S MAX_COUNT WINDOW PAYLOAD_BYTES [BATCH]
 *
 * One connected, nonblocking UDP socket. Keeps at most WINDOW datagrams in flight, sending them
 * with sendmmsg and collecting echoes with recvmmsg, BATCH at a time. Each datagram carries a
 * 64-bit sequence number in its first 8 bytes; a bitmap counts every sequence number echoed
 * once (duplicates and foreign datagrams are counted apart). Sending stops after DURATION_S
 * seconds or MAX_COUNT datagrams, whichever comes first; echoes are then awaited for at most
 * DRAIN_S more. When nothing comes back for STALL_S with the window full, the outstanding
 * datagrams are written off as lost (a late echo still counts) so that loss cannot stall the
 * run. Each echo's round-trip time goes into a 1 us histogram (min/avg/p50/p99/max reported);
 * with WINDOW 1 that is a request/response latency test. Prints one JSON line on stdout.
 * Every loop is bounded in count and time.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_BATCH 256
#define MAX_PAYLOAD 9000
#define DRAIN_S 0.25
#define STALL_S 0.02
#define HARD_LIMIT_S 120.0
#define RING (1 << 17)       /* send times kept per sequence number (window <= RING/2) */
#define HIST_US 100000       /* RTT histogram: 1 us buckets up to 100 ms, then one overflow */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double tv_s(struct timeval tv) { return (double)tv.tv_sec + (double)tv.tv_usec * 1e-6; }

int main(int argc, char **argv)
{
    if (argc < 7) {
        fprintf(stderr, "usage: %s DST_IP PORT DURATION_S MAX_COUNT WINDOW PAYLOAD [BATCH]\n",
                argv[0]);
        return 2;
    }
    const char *dst_ip = argv[1];
    int port = atoi(argv[2]);
    double duration = atof(argv[3]);
    uint64_t max_count = strtoull(argv[4], NULL, 10);
    long window = atol(argv[5]);
    int payload = atoi(argv[6]);
    int batch = argc > 7 ? atoi(argv[7]) : 32;
    if (duration <= 0 || duration > HARD_LIMIT_S || max_count == 0 || max_count > (1ULL << 32) ||
        window < 1 || window > RING / 2 || payload < 8 || payload > MAX_PAYLOAD || batch < 1 || batch > MAX_BATCH) {
        fprintf(stderr, "udpgen: argument out of range\n");
        return 2;
    }

    /* IPv4 or IPv6, by the address's form (bench/v6.py compares the two) */
    struct sockaddr_storage sa = {0};
    socklen_t sa_len;
    struct sockaddr_in *s4 = (struct sockaddr_in *)&sa;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&sa;
    if (inet_pton(AF_INET, dst_ip, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
        sa_len = sizeof *s4;
    } else if (inet_pton(AF_INET6, dst_ip, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        sa_len = sizeof *s6;
    } else {
        fprintf(stderr, "bad address\n");
        return 2;
    }
    int fd = socket(sa.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) { perror("socket"); return 1; }
    int buf = 4 << 20;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &buf, sizeof buf) < 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &buf, sizeof buf) < 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
    if (connect(fd, (struct sockaddr *)&sa, sa_len) < 0) { perror("connect"); return 1; }

    uint8_t *seen = calloc((size_t)(max_count / 8 + 1), 1);
    static uint8_t txbuf[MAX_BATCH][MAX_PAYLOAD];
    static uint8_t rxbuf[MAX_BATCH][MAX_PAYLOAD + 64];
    struct mmsghdr txm[MAX_BATCH], rxm[MAX_BATCH];
    struct iovec txv[MAX_BATCH], rxv[MAX_BATCH];
    double *sent_at = calloc(RING, sizeof(double));
    uint32_t *hist = calloc(HIST_US + 1, sizeof(uint32_t));
    double rtt_sum = 0;
    if (!seen || !sent_at || !hist) { perror("calloc"); return 1; }
    memset(txm, 0, sizeof txm);
    memset(rxm, 0, sizeof rxm);
    for (int i = 0; i < MAX_BATCH; i++) {
        memset(txbuf[i], 0xA5, (size_t)payload);
        txv[i].iov_base = txbuf[i];
        txv[i].iov_len = (size_t)payload;
        txm[i].msg_hdr.msg_iov = &txv[i];
        txm[i].msg_hdr.msg_iovlen = 1;
        rxv[i].iov_base = rxbuf[i];
        rxv[i].iov_len = sizeof rxbuf[i];
        rxm[i].msg_hdr.msg_iov = &rxv[i];
        rxm[i].msg_hdr.msg_iovlen = 1;
    }

    uint64_t sent = 0, echoed = 0, dups = 0, foreign = 0, written_off = 0;
    uint64_t stalls = 0, send_again = 0, send_errors = 0, recv_errors = 0, loops = 0;
    long inflight = 0;
    int stopping = 0;
    double t0 = now_s(), t_end = t0 + duration, drain_until = 0, t_last_send = t0;
    double hard_end = t0 + duration + DRAIN_S + 1.0;

    for (;;) {
        double t = now_s();
        loops++;
        if (t >= hard_end)
            break;
        if (!stopping && (t >= t_end || sent >= max_count)) {
            stopping = 1;
            t_last_send = t;
            drain_until = t + DRAIN_S;
        }
        if (stopping && (inflight <= 0 || t >= drain_until))
            break;

        /* send up to the window */
        if (!stopping && inflight < window) {
            long room = window - inflight;
            if (room > batch) room = batch;
            if ((uint64_t)room > max_count - sent) room = (long)(max_count - sent);
            for (long i = 0; i < room; i++) {
                uint64_t seq = sent + (uint64_t)i;
                memcpy(txbuf[i], &seq, sizeof seq);
                sent_at[seq & (RING - 1)] = t;
            }
            int n = sendmmsg(fd, txm, (unsigned)room, 0);
            if (n > 0) {
                sent += (uint64_t)n;
                inflight += n;
            } else if (n < 0) {
                if (errno == EAGAIN || errno == ENOBUFS) send_again++;
                else send_errors++;
            }
        }

        /* collect echoes */
        int n = recvmmsg(fd, rxm, (unsigned)batch, MSG_DONTWAIT, NULL);
        if (n > 0) {
            double t_rx = now_s();
            for (int i = 0; i < n; i++) {
                uint64_t seq;
                if (rxm[i].msg_len != (unsigned)payload) { foreign++; continue; }
                memcpy(&seq, rxbuf[i], sizeof seq);
                if (seq >= sent) { foreign++; continue; }
                uint8_t bit = (uint8_t)(1u << (seq & 7));
                if (seen[seq >> 3] & bit) { dups++; continue; }
                seen[seq >> 3] |= bit;
                echoed++;
                if (inflight > 0) inflight--;
                if (seq + RING > sent) {
                    double rtt = t_rx - sent_at[seq & (RING - 1)];
                    long us = (long)(rtt * 1e6);
                    rtt_sum += rtt;
                    hist[us < 0 ? 0 : (us > HIST_US ? HIST_US : us)]++;
                }
            }
            continue;
        }
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            recv_errors++; /* e.g. ECONNREFUSED from an ICMP port unreachable */
            continue;
        }
        /* nothing to read: wait only when we cannot send anyway */
        if (stopping || inflight >= window || sent >= max_count) {
            double left = stopping ? drain_until - t : STALL_S;
            int ms = (int)(left * 1000.0) + 1;
            if (ms > (int)(STALL_S * 1000)) ms = (int)(STALL_S * 1000);
            struct pollfd p = {.fd = fd, .events = POLLIN};
            int r = poll(&p, 1, ms);
            if (r == 0 && !stopping) {
                stalls++;
                written_off += (uint64_t)inflight;
                inflight = 0;
            }
        }
    }
    double t1 = now_s();
    /* RTT percentiles from the histogram (nearest rank; bucket b means [b, b+1) us) */
    uint64_t nrtt = 0;
    for (long b = 0; b <= HIST_US; b++) nrtt += hist[b];
    double q[5] = {0, 0.5, 0.99, 1.0, 0};
    long qb[4] = {-1, -1, -1, -1};
    uint64_t acc = 0;
    for (long b = 0; b <= HIST_US && nrtt; b++) {
        if (!hist[b]) continue;
        acc += hist[b];
        if (qb[0] < 0) qb[0] = b;
        for (int k = 1; k < 4; k++)
            if (qb[k] < 0 && (double)acc >= q[k] * (double)nrtt) qb[k] = b;
    }
    double send_time = (stopping ? t_last_send : t1) - t0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("{\"sent\": %llu, \"echoed\": %llu, \"dups\": %llu, \"foreign\": %llu, "
           "\"stalls\": %llu, \"written_off\": %llu, \"send_again\": %llu, "
           "\"send_errors\": %llu, \"recv_errors\": %llu, \"loops\": %llu, "
           "\"send_time_s\": %.6f, \"elapsed_s\": %.6f, \"rate\": %.1f, "
           "\"cpu_user_s\": %.4f, \"cpu_sys_s\": %.4f, \"window\": %ld, \"payload\": %d, "
           "\"batch\": %d, \"rtt_samples\": %llu, \"rtt_min_us\": %ld, \"rtt_avg_us\": %.1f, "
           "\"rtt_p50_us\": %ld, \"rtt_p99_us\": %ld, \"rtt_max_us\": %ld}\n",
           (unsigned long long)sent, (unsigned long long)echoed, (unsigned long long)dups,
           (unsigned long long)foreign, (unsigned long long)stalls,
           (unsigned long long)written_off, (unsigned long long)send_again,
           (unsigned long long)send_errors, (unsigned long long)recv_errors,
           (unsigned long long)loops, send_time, t1 - t0,
           send_time > 0 ? (double)echoed / send_time : 0.0, tv_s(ru.ru_utime), tv_s(ru.ru_stime),
           window, payload, batch, (unsigned long long)nrtt, qb[0],
           nrtt ? rtt_sum / (double)nrtt * 1e6 : 0.0, qb[1], qb[2], qb[3]);
    free(seen);
    free(sent_at);
    free(hist);
    close(fd);
    return 0;
}
