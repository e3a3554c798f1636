/* Cron expressions and their next run in a time zone; see stoke/cron.h.
 *
 * The next run is found by walking instants forward: from an instant, the
 * wall clock it reads gives the next matching wall time, mapped back to an
 * instant with the offset in force; when the offset differs there, a change
 * lies between, and the walk steps to the change's instant first, where the
 * daylight-saving rule is applied. */
#include "stoke/cron.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define YEARS_AHEAD 30
#define BIG_GAP (6 * 3600) /* longer than any daylight-saving shift */

static const char *const month_names[] = {"jan", "feb", "mar", "apr", "may", "jun",
                                          "jul", "aug", "sep", "oct", "nov", "dec"};
static const char *const dow_names[] = {"sun", "mon", "tue", "wed", "thu", "fri", "sat"};

struct field {
    const char *what;
    int lo, hi;
    const char *const *names; /* names[i] is lo + i (month) or i (dow) */
    int n_names;
    int names_base;
};

static const struct field fields[5] = {
    {"minute", 0, 59, NULL, 0, 0},          {"hour", 0, 23, NULL, 0, 0},
    {"day of month", 1, 31, NULL, 0, 0},    {"month", 1, 12, month_names, 12, 1},
    {"day of week", 0, 7, dow_names, 7, 0},
};

static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (errlen)
        vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

/* A number or a name at *p; advances *p. -1 if neither. */
static int read_value(const struct field *f, const char **p)
{
    const char *s = *p;
    if (isdigit((unsigned char)*s)) {
        int v = 0;
        while (isdigit((unsigned char)*s)) {
            v = v * 10 + (*s - '0');
            if (v > 1000)
                return -1;
            s++;
        }
        *p = s;
        return v;
    }
    for (int i = 0; i < f->n_names; i++)
        if (strncasecmp(s, f->names[i], 3) == 0 && !isalpha((unsigned char)s[3])) {
            *p = s + 3;
            return f->names_base + i;
        }
    return -1;
}

/* One field's text (no spaces) into *bits; *star says whether it began with
 * '*' (or '?' in the day fields). */
static int parse_field(const struct field *f, const char *text, uint64_t *bits, bool *star,
                       bool day_field, char *err, size_t errlen)
{
    *bits = 0;
    *star = text[0] == '*' || (day_field && text[0] == '?');
    const char *p = text;
    for (;;) {
        int a, b, step = 1;
        bool range = false;
        if (*p == '*' || (day_field && *p == '?')) {
            a = f->lo;
            b = f->hi;
            range = true;
            p++;
        } else {
            a = read_value(f, &p);
            if (a < 0)
                return fail(err, errlen, "%s: %s: expected a number%s, '*' or a range", f->what,
                            text, f->names ? " or a name" : "");
            b = a;
            if (*p == '-') {
                p++;
                b = read_value(f, &p);
                if (b < 0)
                    return fail(err, errlen, "%s: %s: a range needs an end", f->what, text);
                range = true;
            }
        }
        if (*p == '/') {
            p++;
            if (!isdigit((unsigned char)*p))
                return fail(err, errlen, "%s: %s: a step needs a number", f->what, text);
            step = 0;
            while (isdigit((unsigned char)*p)) {
                step = step * 10 + (*p - '0');
                if (step > 1000)
                    break;
                p++;
            }
            if (step < 1 || step > f->hi)
                return fail(err, errlen, "%s: %s: step must be 1..%d", f->what, text, f->hi);
            if (!range)
                b = f->hi; /* a/n: from a to the end */
        }
        if (a < f->lo || a > f->hi || b < f->lo || b > f->hi)
            return fail(err, errlen, "%s: %s: values must be %d..%d", f->what, text, f->lo, f->hi);
        if (a > b)
            return fail(err, errlen, "%s: %s: a range must go upwards (%d-%d)", f->what, text, a,
                        b);
        for (int v = a; v <= b; v += step)
            *bits |= UINT64_C(1) << v;
        if (*p == '\0')
            return 0;
        if (*p != ',')
            return fail(err, errlen, "%s: %s: unexpected '%c'", f->what, text, *p);
        p++;
    }
}

static const struct {
    const char *name, *expr;
} macros[] = {
    {"@yearly", "0 0 1 1 *"}, {"@annually", "0 0 1 1 *"}, {"@monthly", "0 0 1 * *"},
    {"@weekly", "0 0 * * 0"}, {"@daily", "0 0 * * *"},    {"@midnight", "0 0 * * *"},
    {"@hourly", "0 * * * *"},
};

/* A tzdata name: letters, digits, '/', '_', '+', '-'; no component starting
 * with '.'; a file that starts as TZif does. */
static int check_zone(const char *zone, char *err, size_t errlen)
{
    size_t n = strlen(zone);
    if (n >= STOKE_CRON_ZONE_MAX)
        return fail(err, errlen, "time zone: too long (at most %d characters)",
                    STOKE_CRON_ZONE_MAX - 1);
    for (size_t i = 0; i < n; i++) {
        char ch = zone[i];
        bool ok = isalnum((unsigned char)ch) || ch == '/' || ch == '_' || ch == '+' ||
                  (ch == '-' && i > 0);
        if (!ok || (ch == '/' && (i == 0 || zone[i + 1] == '/' || zone[i + 1] == '\0')))
            return fail(err, errlen, "time zone %s: not an IANA zone name (e.g. Europe/Berlin)",
                        zone);
    }
    const char *dir = getenv("TZDIR");
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir && *dir ? dir : "/usr/share/zoneinfo", zone);
    char magic[4] = {0};
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t got = fd >= 0 ? read(fd, magic, sizeof(magic)) : -1;
    if (fd >= 0)
        close(fd);
    if (got != 4 || memcmp(magic, "TZif", 4) != 0)
        return fail(err, errlen, "time zone %s: unknown on this system (tzdata has no %s)", zone,
                    path);
    return 0;
}

int stoke_cron_parse(const char *expr, const char *zone, struct stoke_cron *c, char *err,
                     size_t errlen)
{
    memset(c, 0, sizeof(*c));
    if (errlen)
        err[0] = '\0';
    if (!expr)
        return fail(err, errlen, "no schedule");
    while (isspace((unsigned char)*expr))
        expr++;
    if (expr[0] == '@') {
        size_t len = strcspn(expr, " \t\n");
        const char *rest = expr + len;
        while (isspace((unsigned char)*rest))
            rest++;
        const char *found = NULL;
        for (size_t i = 0; i < sizeof(macros) / sizeof(macros[0]); i++)
            if (strlen(macros[i].name) == len && strncasecmp(expr, macros[i].name, len) == 0)
                found = macros[i].expr;
        if (!found || *rest)
            return fail(err, errlen,
                        "%.*s: unknown macro (@yearly, @annually, @monthly, @weekly, @daily, "
                        "@midnight, @hourly)",
                        (int)(len > 32 ? 32 : len), expr);
        expr = found;
    }
    char words[5][128];
    int n = 0;
    const char *p = expr;
    for (;;) {
        while (isspace((unsigned char)*p))
            p++;
        if (!*p)
            break;
        size_t len = strcspn(p, " \t\r\n");
        if (n == 5)
            return fail(err, errlen,
                        "%d or more fields: a schedule has 5 (minute hour "
                        "day-of-month month day-of-week)",
                        n + 1);
        if (len >= sizeof(words[0]))
            return fail(err, errlen, "%s: field too long", fields[n].what);
        memcpy(words[n], p, len);
        words[n][len] = '\0';
        n++;
        p += len;
    }
    if (n != 5)
        return fail(err, errlen,
                    "%d fields: a schedule has 5 (minute hour day-of-month month "
                    "day-of-week)",
                    n);
    uint64_t bits[5];
    bool star[5];
    for (int i = 0; i < 5; i++) {
        int r =
            parse_field(&fields[i], words[i], &bits[i], &star[i], i == 2 || i == 4, err, errlen);
        if (r < 0)
            return r;
    }
    c->minute = bits[0];
    c->hour = (uint32_t)bits[1];
    c->dom = (uint32_t)bits[2];
    c->month = (uint16_t)bits[3];
    c->dow = (uint8_t)((bits[4] | (bits[4] >> 7)) & 0x7f); /* 7 is Sunday */
    c->dom_star = star[2];
    c->dow_star = star[4];
    c->fixed = !star[0] && !star[1];
    if (zone && *zone && strcmp(zone, "UTC") != 0) {
        int r = check_zone(zone, err, errlen);
        if (r < 0)
            return r;
        snprintf(c->zone, sizeof(c->zone), "%s", zone);
    }
    /* Refuse what never runs (the 30th of February), from any start: the
     * calendar repeats every 400 years, and a day-of-week every 28. */
    if (stoke_cron_next(c, 946684800 /* 2000-01-01 */) < 0)
        return fail(err, errlen, "%s: never runs (no such day)", expr);
    return 0;
}

/* Local time, as the wall clock reads it in c's zone. */

static pthread_mutex_t tz_lock = PTHREAD_MUTEX_INITIALIZER;

static int64_t offset_at(int64_t t)
{
    time_t tt = (time_t)t;
    struct tm tm;
    if (!localtime_r(&tt, &tm))
        return 0;
    return tm.tm_gmtoff;
}

static bool day_matches(const struct stoke_cron *c, const struct tm *tm)
{
    bool dom = c->dom & (UINT32_C(1) << tm->tm_mday);
    bool dow = c->dow & (1u << tm->tm_wday);
    return c->dom_star || c->dow_star ? dom && dow : dom || dow;
}

static bool wall_matches(const struct stoke_cron *c, int64_t wall)
{
    time_t tt = (time_t)wall;
    struct tm tm;
    gmtime_r(&tt, &tm);
    return (c->month & (1u << (tm.tm_mon + 1))) && day_matches(c, &tm) &&
           (c->hour & (UINT32_C(1) << tm.tm_hour)) && (c->minute & (UINT64_C(1) << tm.tm_min));
}

/* The first wall time >= w (a whole minute) that matches, before `limit`;
 * -1 if none. Wall times are seconds on a UTC-like scale. */
static int64_t next_wall(const struct stoke_cron *c, int64_t w, int64_t limit)
{
    while (w < limit) {
        time_t tt = (time_t)w;
        struct tm tm;
        gmtime_r(&tt, &tm);
        if (!(c->month & (1u << (tm.tm_mon + 1)))) {
            tm.tm_mon++;
            tm.tm_mday = 1;
            tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
        } else if (!day_matches(c, &tm)) {
            tm.tm_mday++;
            tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
        } else if (!(c->hour & (UINT32_C(1) << tm.tm_hour))) {
            tm.tm_hour++;
            tm.tm_min = tm.tm_sec = 0;
        } else if (!(c->minute & (UINT64_C(1) << tm.tm_min))) {
            tm.tm_min++;
            tm.tm_sec = 0;
        } else {
            return w;
        }
        w = (int64_t)timegm(&tm); /* normalises the carried field */
    }
    return -1;
}

/* The first instant in (lo, hi] whose offset is not `off` (there is one at
 * hi): the change's instant, to the second. */
static int64_t change_in(int64_t lo, int64_t hi, int64_t off)
{
    while (hi - lo > 1) {
        int64_t mid = lo + (hi - lo) / 2;
        if (offset_at(mid) != off)
            hi = mid;
        else
            lo = mid;
    }
    return hi;
}

/* Whether instant t reads a wall time the clock already showed: within a
 * repeated interval after the clock went back. */
static bool repeated(int64_t t, int64_t off)
{
    int64_t before = offset_at(t - BIG_GAP);
    if (before <= off)
        return false;
    int64_t change = change_in(t - BIG_GAP, t, before);
    return t < change + (before - off);
}

/* Whether a fixed-time job has a time in the interval skipped just before
 * instant t (t is the first instant after the clock went forward). */
static bool skipped_here(const struct stoke_cron *c, int64_t t, int64_t off)
{
    int64_t prev = offset_at(t - 1);
    if (prev >= off)
        return false;
    int64_t from = (t - 1 + prev) / 60 * 60 + 60; /* the first wall minute never shown */
    int64_t to = t + off;                         /* the wall time shown at t */
    for (int64_t w = from; w < to && w < from + BIG_GAP; w += 60)
        if (wall_matches(c, w))
            return true;
    return false;
}

static int64_t next_in_zone(const struct stoke_cron *c, int64_t after)
{
    int64_t limit = after + (int64_t)YEARS_AHEAD * 366 * 86400;
    int64_t t = after - ((after % 60) + 60) % 60 + 60; /* the next whole minute */
    while (t < limit) {
        int64_t off = offset_at(t);
        int64_t wall = t + off;
        if (wall_matches(c, wall - ((wall % 60) + 60) % 60)) {
            if (!c->fixed || !repeated(t, off))
                return t;
        } else if (c->fixed && skipped_here(c, t, off)) {
            return t;
        }
        int64_t w = wall - ((wall % 60) + 60) % 60 + 60;
        w = next_wall(c, w, limit + BIG_GAP);
        if (w < 0)
            return -1;
        int64_t next = w - off;
        if (next <= t)
            next = t + 60;
        if (offset_at(next) != off) {
            /* The offset changes on the way: go to the change first. */
            next = change_in(t, next, off);
        }
        t = next;
    }
    return -1;
}

int64_t stoke_cron_next(const struct stoke_cron *c, int64_t after)
{
    if (!c->zone[0]) {
        int64_t t = after - ((after % 60) + 60) % 60 + 60;
        return next_wall(c, t, after + (int64_t)YEARS_AHEAD * 366 * 86400);
    }
    pthread_mutex_lock(&tz_lock);
    const char *old = getenv("TZ");
    char *saved = old ? strdup(old) : NULL;
    setenv("TZ", c->zone, 1);
    tzset();
    int64_t r = next_in_zone(c, after);
    if (saved)
        setenv("TZ", saved, 1);
    else
        unsetenv("TZ");
    tzset();
    free(saved);
    pthread_mutex_unlock(&tz_lock);
    return r;
}

int64_t stoke_cron_latest(const struct stoke_cron *c, int64_t after, int64_t now)
{
    /* Forward from a window before now, widened until a run is in it or it
     * reaches back to `after`: a few steps, however long ago `after` was. */
    static const int64_t windows[] = {3600, 86400, 32 * 86400, 367 * 86400,
                                      (int64_t)YEARS_AHEAD * 366 * 86400};
    for (size_t i = 0; i < sizeof(windows) / sizeof(windows[0]); i++) {
        int64_t from = now - windows[i] > after ? now - windows[i] : after;
        int64_t last = -1;
        for (int64_t t = stoke_cron_next(c, from); t >= 0 && t <= now; t = stoke_cron_next(c, t))
            last = t;
        if (last >= 0 || from == after)
            return last;
    }
    return -1;
}
