/* Structured logging: one JSON object per line on stderr, built in a buffer
 * and written with a single write() so lines from several threads or
 * processes sharing a pipe stay whole (lines are capped under 4 KiB).
 * Library code in common/ does not log; the programs do. */
#ifndef STOKE_LOG_H
#define STOKE_LOG_H

#include <stddef.h>

enum stoke_log_level {
    STOKE_LOG_DEBUG = 0,
    STOKE_LOG_INFO,
    STOKE_LOG_WARN,
    STOKE_LOG_ERROR,
};

/* Component name ("controller", "activator") and minimum level; call once
 * at startup before threads start. `comp` must outlive the program. */
void stoke_log_init(const char *comp, enum stoke_log_level min);

/* Parses "debug", "info", "warn", "error". Returns 0 or -EINVAL. */
int stoke_log_level_parse(const char *s, enum stoke_log_level *ret);

/* Logs `msg` (printf-style) with optional context: `fn` (function name) and
 * `err` (a negative errno, named with uv_err_name(); 0 = none). Strings are
 * JSON-escaped; a line that would exceed the cap is truncated. */
void stoke_log(enum stoke_log_level level, const char *fn, int err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* A key and its value for stoke_log_fields(): a string (str), or a number
 * (str NULL) written as JSON number with `decimals` digits after the point. */
struct stoke_log_field {
    const char *key;
    const char *str;
    double num;
    int decimals;
};

/* Like stoke_log(), with `n` more fields on the line (keys are not escaped:
 * pass literals). */
void stoke_log_fields(enum stoke_log_level level, const char *fn, int err,
                      const struct stoke_log_field *fields, size_t n, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

#define stoke_debug(fn, ...) stoke_log(STOKE_LOG_DEBUG, fn, 0, __VA_ARGS__)
#define stoke_info(fn, ...) stoke_log(STOKE_LOG_INFO, fn, 0, __VA_ARGS__)
#define stoke_warn(fn, err, ...) stoke_log(STOKE_LOG_WARN, fn, err, __VA_ARGS__)
#define stoke_error(fn, err, ...) stoke_log(STOKE_LOG_ERROR, fn, err, __VA_ARGS__)

#endif
