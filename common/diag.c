#include "stoke/diag.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void stoke_diag_set(struct stoke_diag *d, const char *file, unsigned line, unsigned column,
                    const char *field, const char *fmt, ...)
{
    va_list ap;

    if (!d)
        return;
    /* snprintf truncates safely; a cut file name or message beats none. */
    (void)snprintf(d->file, sizeof(d->file), "%s", file ? file : "");
    d->line = line;
    d->column = column;
    (void)snprintf(d->field, sizeof(d->field), "%s", field ? field : "");
    va_start(ap, fmt);
    if (vsnprintf(d->message, sizeof(d->message), fmt, ap) < 0)
        d->message[0] = '\0';
    va_end(ap);
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
