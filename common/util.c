#include "stoke/util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

void stoke_buf_init(struct stoke_buf *b, size_t limit)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->limit = limit;
}

void stoke_buf_done(struct stoke_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

static int buf_reserve(struct stoke_buf *b, size_t extra)
{
    if (extra > b->limit - b->len)
        return -ENOBUFS;
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return 0;
    size_t ncap = b->cap ? b->cap : 256;
    while (ncap < need)
        ncap *= 2;
    char *n = realloc(b->data, ncap);
    if (!n)
        return -ENOMEM;
    b->data = n;
    b->cap = ncap;
    return 0;
}

int stoke_buf_append(struct stoke_buf *b, const void *data, size_t len)
{
    int r = buf_reserve(b, len);
    if (r < 0)
        return r;
    if (len)
        memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
    return 0;
}

int stoke_buf_printf(struct stoke_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return -EINVAL;
    int r = buf_reserve(b, (size_t)n);
    if (r < 0)
        return r;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

void stoke_buf_clear(struct stoke_buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

void stoke_buf_consume(struct stoke_buf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
    } else {
        memmove(b->data, b->data + n, b->len - n);
        b->len -= n;
    }
    if (b->data)
        b->data[b->len] = '\0';
}

char *stoke_buf_steal(struct stoke_buf *b, size_t *ret_len)
{
    char *d = b->data;
    if (ret_len)
        *ret_len = b->len;
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    return d;
}

int stoke_parse_u64(const char *s, uint64_t *ret)
{
    uint64_t v = 0;
    if (!s || !*s)
        return -EINVAL;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return -EINVAL;
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -ERANGE;
        v = v * 10 + d;
    }
    *ret = v;
    return 0;
}

int stoke_addr_parse(const char *s, struct stoke_addr *ret)
{
    memset(ret, 0, sizeof(*ret));
    if (strncmp(s, "unix:", 5) == 0) {
        const char *p = s + 5;
        if (strncmp(p, "//", 2) == 0)
            p += 2;
        size_t n = strlen(p);
        if (n == 0 || n >= sizeof(ret->path) || p[0] != '/')
            return -EINVAL;
        memcpy(ret->path, p, n + 1);
        ret->is_unix = true;
        return 0;
    }

    char host[64];
    const char *port;
    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (!end || end[1] != ':' || (size_t)(end - s - 1) >= sizeof(host))
            return -EINVAL;
        memcpy(host, s + 1, (size_t)(end - s - 1));
        host[end - s - 1] = '\0';
        port = end + 2;
    } else {
        const char *colon = strrchr(s, ':');
        if (!colon || (size_t)(colon - s) >= sizeof(host) || strchr(s, ':') != colon)
            return -EINVAL;
        memcpy(host, s, (size_t)(colon - s));
        host[colon - s] = '\0';
        port = colon + 1;
    }
    uint64_t p;
    if (stoke_parse_u64(port, &p) < 0 || p > 65535)
        return -EINVAL;

    struct sockaddr_in *in4 = (struct sockaddr_in *)&ret->ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ret->ss;
    if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons((uint16_t)p);
    } else if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)p);
    } else {
        return -EINVAL;
    }
    return 0;
}

void stoke_addr_format(const struct stoke_addr *a, char *buf, size_t size)
{
    char host[INET6_ADDRSTRLEN] = "?";
    if (a->is_unix) {
        snprintf(buf, size, "unix:%s", a->path);
    } else if (a->ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&a->ss;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
        snprintf(buf, size, "[%s]:%u", host, ntohs(in6->sin6_port));
    } else {
        const struct sockaddr_in *in4 = (const struct sockaddr_in *)&a->ss;
        inet_ntop(AF_INET, &in4->sin_addr, host, sizeof(host));
        snprintf(buf, size, "%s:%u", host, ntohs(in4->sin_port));
    }
}

bool stoke_strieq(const char *a, size_t alen, const char *b)
{
    return strlen(b) == alen && strncasecmp(a, b, alen) == 0;
}

int stoke_token_read(const char *path, char **ret)
{
    char buf[STOKE_TOKEN_MAX + 2];
    FILE *f = fopen(path, "re");
    if (!f)
        return -errno;
    bool got = fgets(buf, sizeof(buf), f) != NULL;
    (void)fclose(f);
    size_t len = got ? strcspn(buf, "\r\n") : 0;
    buf[len] = '\0';
    bool ok = len >= STOKE_TOKEN_MIN && len <= STOKE_TOKEN_MAX;
    for (size_t i = 0; ok && i < len; i++)
        ok = buf[i] > ' ' && buf[i] < 0x7f;
    *ret = ok ? strdup(buf) : NULL;
    explicit_bzero(buf, sizeof(buf));
    if (!ok)
        return -EINVAL;
    return *ret ? 0 : -ENOMEM;
}

bool stoke_token_equal(const char *expected, const char *given, size_t len)
{
    size_t elen = strlen(expected);
    unsigned char diff = (unsigned char)(len != elen);
    for (size_t i = 0; i < elen; i++)
        diff |= (unsigned char)expected[i] ^ (unsigned char)(i < len ? given[i] : 0);
    return diff == 0;
}
