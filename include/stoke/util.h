/* Small shared helpers: bounded buffers, number and address parsing. */
#ifndef STOKE_UTIL_H
#define STOKE_UTIL_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/un.h>

#define STOKE_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define stoke_container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/* A growable byte buffer with a hard cap set at init: appends past the cap
 * fail with -ENOBUFS and leave the buffer as it was. Always NUL-terminated
 * (the NUL is not counted in len) so text can be used as a C string. */
struct stoke_buf {
    char *data;
    size_t len;
    size_t cap;   /* allocated bytes */
    size_t limit; /* maximum len */
};

void stoke_buf_init(struct stoke_buf *b, size_t limit);
/* Frees the storage; the buffer may be reused after stoke_buf_init(). */
void stoke_buf_done(struct stoke_buf *b);
/* Returns 0, -ENOBUFS past the limit, -ENOMEM. */
int stoke_buf_append(struct stoke_buf *b, const void *data, size_t len);
int stoke_buf_printf(struct stoke_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Empties the buffer, keeping its storage (and the NUL terminator). */
void stoke_buf_clear(struct stoke_buf *b);
/* Drops the first n bytes (n <= len). */
void stoke_buf_consume(struct stoke_buf *b, size_t n);
/* Hands the storage to the caller (free()), leaving the buffer empty.
 * Returns NULL when the buffer never allocated. */
char *stoke_buf_steal(struct stoke_buf *b, size_t *ret_len);

/* Strict unsigned decimal: digits only, no sign, no spaces, no overflow.
 * Returns 0 or -EINVAL / -ERANGE. */
int stoke_parse_u64(const char *s, uint64_t *ret);

/* An address stoke listens on or connects to: "unix:/path",
 * "IPv4:port" or "[IPv6]:port". IP literals only: never DNS. */
struct stoke_addr {
    bool is_unix;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    struct sockaddr_storage ss; /* for IP */
};

/* Returns 0 or -EINVAL. */
int stoke_addr_parse(const char *s, struct stoke_addr *ret);

/* Formats as "host:port" / "[host]:port" / "unix:/path". */
void stoke_addr_format(const struct stoke_addr *a, char *buf, size_t size);

/* Case-insensitive ASCII compare of a counted string with a C string. */
bool stoke_strieq(const char *a, size_t alen, const char *b);

/* A shared secret read from a file (the admin API's bearer token, the
 * activator channel's token): the file's first line without its line end,
 * STOKE_TOKEN_MIN..STOKE_TOKEN_MAX printable ASCII bytes, no spaces. */
#define STOKE_TOKEN_MIN 16
#define STOKE_TOKEN_MAX 4096

/* Reads the token of `path`. Blocking: startup only. Returns 0 and an owned
 * string in *ret (wipe it with explicit_bzero() before free()), -errno when
 * the file cannot be read, or -EINVAL when its first line is not a token. */
int stoke_token_read(const char *path, char **ret);

/* Whether `given` (`len` bytes, not NUL-terminated) is `expected`. Constant
 * time in the content: every byte of `expected` is compared whatever
 * `given` holds; only the length of `expected` shows. */
bool stoke_token_equal(const char *expected, const char *given, size_t len);

#endif
