/* Where and what went wrong with some input: filled by parsers instead of
 * logging, so the caller reports it once, with its own context. */
#ifndef STOKE_DIAG_H
#define STOKE_DIAG_H

#include <stddef.h>

struct stoke_diag {
    char file[256];
    unsigned line;   /* 1-based; 0 when not known */
    unsigned column; /* 1-based; 0 when not known */
    char field[128]; /* dotted path, e.g. "spec.scale.min"; "" for the document */
    char message[256];
};

/* Sets every member (truncating safely); printf-style message. */
void stoke_diag_set(struct stoke_diag *d, const char *file, unsigned line, unsigned column,
                    const char *field, const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* Formats "file:line:column: field: message" into buf (always terminated).
 * Returns the length snprintf would have produced. */
int stoke_diag_format(const struct stoke_diag *d, char *buf, size_t size);

#endif
