/* A hostile function for tests/e2e/test_isolation.py: what one function
 * could do to the others and to stoke if they shared its network.
 *
 * At start it binds and listens on every port of BIND_FROM..BIND_TO
 * (0.0.0.0, the ports of other replicas), so that a replica of another
 * function could not bind its own port and its traffic would come here.
 * Then it serves HTTP on $PORT. Each request to any port it listens on is
 * answered with JSON:
 *   {"hostile":true,"port":P,"bound":N,"bind_errors":N,"captured":N,
 *    "reached":[ports],"refused":N,"other":N}
 * where `port` is the port the request came in on (a port of the range: it
 * captured another function's request), `captured` counts those, and
 * `reached` lists the ports of PROBE_PORTS (comma-separated) it could open
 * a TCP connection to on 127.0.0.1, tried again for each request.
 *
 * It sends nothing anywhere but 127.0.0.1: in its own network namespace
 * that is its own loopback. Static, for a FROM scratch image (packed by
 * deploy/build-example.sh). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define MAX_PROBES 32

static int probes[MAX_PROBES];
static int n_probes;
static unsigned bound, bind_errors, captured;

static int port_of(const char *s)
{
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (!s[0] || (*end && *end != ',') || v < 1 || v > 65535)
        return -1;
    return (int)v;
}

static int listen_on(int port, bool quiet)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 64) < 0) {
        if (!quiet)
            fprintf(stderr, "hostile: cannot listen on %d: %s\n", port, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

/* Whether a TCP connection to 127.0.0.1:port opens (at most 500 ms). */
static bool reaches(int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    struct timeval tv = {.tv_sec = 0, .tv_usec = 500000};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    bool ok;
    if (fd < 0)
        return false;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    ok = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(fd);
    return ok;
}

/* Reads a request head (whatever comes within 2 s, up to 8 KiB) and
 * answers. One connection at a time: this is a test program. */
static void serve(int cfd, int port, bool is_range)
{
    char buf[8192], body[1024], head[256];
    struct timeval tv = {.tv_sec = 2, .tv_usec = 0};
    size_t got = 0, blen = 0;
    unsigned refused = 0;

    (void)setsockopt(cfd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    while (got < sizeof(buf) - 1) {
        ssize_t n = read(cfd, buf + got, sizeof(buf) - 1 - got);
        if (n <= 0)
            break;
        got += (size_t)n;
        buf[got] = '\0';
        if (strstr(buf, "\r\n\r\n"))
            break;
    }
    if (is_range)
        captured++;
    blen = (size_t)snprintf(body, sizeof(body),
                            "{\"hostile\":true,\"port\":%d,\"bound\":%u,"
                            "\"bind_errors\":%u,\"captured\":%u,\"reached\":[",
                            port, bound, bind_errors, captured);
    for (int i = 0; i < n_probes && blen < sizeof(body) - 16; i++) {
        if (reaches(probes[i]))
            blen += (size_t)snprintf(body + blen, sizeof(body) - blen, "%s%d",
                                     body[blen - 1] == '[' ? "" : ",", probes[i]);
        else
            refused++;
    }
    blen += (size_t)snprintf(body + blen, sizeof(body) - blen, "],\"refused\":%u}\n", refused);
    int hlen = snprintf(head, sizeof(head),
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                        blen);
    (void)!write(cfd, head, (size_t)hlen);
    (void)!write(cfd, body, blen);
    close(cfd);
}

int main(void)
{
    const char *port_s = getenv("PORT"), *from_s = getenv("BIND_FROM"), *to_s = getenv("BIND_TO");
    const char *probe_s = getenv("PROBE_PORTS");
    int port = port_s ? port_of(port_s) : 8080;
    int from = from_s ? port_of(from_s) : 0, to = to_s ? port_of(to_s) : -1;
    struct rlimit rl;
    int ep, lfd;

    if (port < 0) {
        fprintf(stderr, "hostile: bad PORT\n");
        return 2;
    }
    for (const char *p = probe_s; p && *p && n_probes < MAX_PROBES;) {
        int v = port_of(p);
        if (v < 0) {
            fprintf(stderr, "hostile: bad PROBE_PORTS\n");
            return 2;
        }
        probes[n_probes++] = v;
        p = strchr(p, ',');
        p = p ? p + 1 : NULL;
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    lfd = listen_on(port, false);
    if (ep < 0 || lfd < 0)
        return 1;
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)port << 32 | (uint32_t)lfd};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) < 0)
        return 1;
    for (int p = from; from > 0 && p <= to; p++) {
        if (p == port)
            continue;
        int fd = listen_on(p, true);
        if (fd < 0) {
            bind_errors++;
            continue;
        }
        bound++;
        struct epoll_event e = {.events = EPOLLIN,
                                .data.u64 = (uint64_t)p << 32 | 1u << 31 | (uint32_t)fd};
        (void)epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
    }
    fprintf(stderr, "hostile: listening on %d; bound %u of %d..%d (%u failed); probing %d ports\n",
            port, bound, from, to, bind_errors, n_probes);
    for (;;) {
        struct epoll_event evs[16];
        int n = epoll_wait(ep, evs, 16, -1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return 1;
        for (int i = 0; i < n; i++) {
            int fd = (int)(evs[i].data.u64 & 0x7fffffffu);
            bool is_range = (evs[i].data.u64 & (1u << 31)) != 0;
            int on = (int)(evs[i].data.u64 >> 32);
            int cfd = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
            if (cfd >= 0)
                serve(cfd, on, is_range);
        }
    }
}
