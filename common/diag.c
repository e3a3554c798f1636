#include "stoke/diag.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

/* The length a UTF-8 sequence starting with byte c claims, or 0. */
static size_t utf8_expect(unsigned char c)
{
    if (c >= 0xC2 && c <= 0xDF)
        return 2;
    if (c >= 0xE0 && c <= 0xEF)
        return 3;
    if (c >= 0xF0 && c <= 0xF4)
        return 4;
    return 0;
}

/* Length of the valid UTF-8 sequence at s (at most n bytes), or 0. Refuses
 * overlong forms, surrogates and code points past U+10FFFF. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    size_t len = utf8_expect(s[0]);
    unsigned cp = s[0] & (len == 2 ? 0x1Fu : len == 3 ? 0x0Fu : 0x07u);

    if (len == 0 || len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3Fu);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return len;
}

/* Copies src into dst (always terminated) so that it can go into a log line
 * or a JSON string as is: control characters become \n, \t, \xNN..., bytes
 * that are not UTF-8 become '?', and a cut never splits a character or an
 * escape. Input that was cut mid-character by an earlier snprintf loses that
 * last partial character. */
static void clean_copy(char *dst, size_t size, const char *src)
{
    const unsigned char *s = (const unsigned char *)src;
    size_t n = strlen(src), o = 0;

    for (size_t i = 0; i < n;) {
        char esc[5];
        const char *out = esc;
        size_t w, adv = 1;

        if (s[i] < 0x20 || s[i] == 0x7F) {
            if (s[i] == '\n')
                memcpy(esc, "\\n", 3);
            else if (s[i] == '\r')
                memcpy(esc, "\\r", 3);
            else if (s[i] == '\t')
                memcpy(esc, "\\t", 3);
            else
                (void)snprintf(esc, sizeof(esc), "\\x%02X", s[i]);
            w = strlen(esc);
        } else if (s[i] < 0x80) {
            out = (const char *)s + i;
            w = 1;
        } else {
            w = utf8_len(s + i, n - i);
            if (w == 0 && utf8_expect(s[i]) > n - i)
                break; /* cut short at the very end: drop it */
            if (w == 0) {
                esc[0] = '?';
                esc[1] = '\0';
                w = 1;
            } else {
                out = (const char *)s + i;
                adv = w;
            }
        }
        if (o + w >= size)
            break;
        memcpy(dst + o, out, w);
        o += w;
        i += adv;
    }
    dst[o] = '\0';
}

void stoke_diag_set(struct stoke_diag *d, const char *file, unsigned line, unsigned column,
                    const char *field, const char *fmt, ...)
{
    char msg[sizeof(d->message) * 2];
    va_list ap;

    if (!d)
        return;
    clean_copy(d->file, sizeof(d->file), file ? file : "");
    d->line = line;
    d->column = column;
    clean_copy(d->field, sizeof(d->field), field ? field : "");
    va_start(ap, fmt);
    if (vsnprintf(msg, sizeof(msg), fmt, ap) < 0)
        msg[0] = '\0';
    va_end(ap);
    clean_copy(d->message, sizeof(d->message), msg);
}

int stoke_diag_format(const struct stoke_diag *d, char *buf, size_t size)
{
    char where[sizeof(d->file) + 32];
    const char *file = d->file[0] ? d->file : "<input>";
    int n;

    /* Unknown parts are left out rather than printed as 0 or "". */
    if (d->line && d->column)
        n = snprintf(where, sizeof(where), "%s:%u:%u", file, d->line, d->column);
    else if (d->line)
        n = snprintf(where, sizeof(where), "%s:%u", file, d->line);
    else
        n = snprintf(where, sizeof(where), "%s", file);
    if (n < 0)
        where[0] = '\0';

    if (!buf)
        size = 0;
    if (d->field[0])
        n = snprintf(buf, size, "%s: %s: %s", where, d->field, d->message);
    else
        n = snprintf(buf, size, "%s: %s", where, d->message);
    if (n < 0 && size > 0)
        buf[0] = '\0';
    return n;
}
