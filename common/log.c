#include "stoke/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#define LOG_LINE_MAX 4000

static const char *log_comp = "stoke";
static enum stoke_log_level log_min = STOKE_LOG_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void stoke_log_init(const char *comp, enum stoke_log_level min)
{
    log_comp = comp;
    log_min = min;
}

int stoke_log_level_parse(const char *s, enum stoke_log_level *ret)
{
    for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *ret = (enum stoke_log_level)i;
            return 0;
        }
    }
    return -EINVAL;
}

struct line {
    char buf[LOG_LINE_MAX + 2];
    size_t len;
};

static void put_raw(struct line *l, const char *s, size_t n)
{
    if (n > LOG_LINE_MAX - l->len)
        n = LOG_LINE_MAX - l->len;
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

/* Appends `s` JSON-escaped; control bytes become \u00XX. Bytes >= 0x80 pass
 * through: messages carry our own text and names that were validated. */
static void put_escaped(struct line *l, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            put_raw(l, esc, 2);
        } else if (c < 0x20) {
            int n = snprintf(esc, sizeof(esc), "\\u%04x", c);
            put_raw(l, esc, (size_t)n);
        } else {
            put_raw(l, (const char *)&c, 1);
        }
    }
}

static void put_kv(struct line *l, const char *key, const char *value)
{
    put_raw(l, ",\"", 2);
    put_raw(l, key, strlen(key));
    put_raw(l, "\":\"", 3);
    put_escaped(l, value);
    put_raw(l, "\"", 1);
}

static void log_line(enum stoke_log_level level, const char *fn, int err,
                     const struct stoke_log_field *fields, size_t n_fields, const char *fmt,
                     va_list ap) __attribute__((format(printf, 6, 0)));

void stoke_log(enum stoke_log_level level, const char *fn, int err, const char *fmt, ...)
{
    if (level < log_min)
        return;
    va_list ap;
    va_start(ap, fmt);
    log_line(level, fn, err, NULL, 0, fmt, ap);
    va_end(ap);
}

void stoke_log_fields(enum stoke_log_level level, const char *fn, int err,
                      const struct stoke_log_field *fields, size_t n, const char *fmt, ...)
{
    if (level < log_min)
        return;
    va_list ap;
    va_start(ap, fmt);
    log_line(level, fn, err, fields, n, fmt, ap);
    va_end(ap);
}

static void log_line(enum stoke_log_level level, const char *fn, int err,
                     const struct stoke_log_field *fields, size_t n_fields, const char *fmt,
                     va_list ap)
{

    struct line l = {.len = 0};
    struct timeval tv;
    struct tm tm;
    char ts[40], msg[LOG_LINE_MAX];

    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    size_t n = strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof(ts) - n, ".%03dZ", (int)(tv.tv_usec / 1000));

    vsnprintf(msg, sizeof(msg), fmt, ap);

    put_raw(&l, "{\"ts\":\"", 7);
    put_raw(&l, ts, strlen(ts));
    put_raw(&l, "\"", 1);
    put_kv(&l, "level", level_names[level]);
    put_kv(&l, "comp", log_comp);
    put_kv(&l, "msg", msg);
    if (fn)
        put_kv(&l, "fn", fn);
    if (err < 0)
        put_kv(&l, "err", uv_err_name(err));
    for (size_t i = 0; i < n_fields; i++) {
        if (fields[i].str) {
            put_kv(&l, fields[i].key, fields[i].str);
            continue;
        }
        char num[64];
        int k = snprintf(num, sizeof(num), "%.*f", fields[i].decimals, fields[i].num);
        put_raw(&l, ",\"", 2);
        put_raw(&l, fields[i].key, strlen(fields[i].key));
        put_raw(&l, "\":", 2);
        put_raw(&l, num, (size_t)k);
    }
    l.buf[l.len++] = '}';
    l.buf[l.len++] = '\n';
    /* One write keeps the line whole; a short or failed write to stderr has
     * nowhere better to be reported. */
    ssize_t w = write(STDERR_FILENO, l.buf, l.len);
    (void)w;
}
