/* Knative serving.knative.dev/v1 Service manifests to stoke specs.
 *
 * Like common/spec.c, two passes. The first turns libyaml's events into a
 * flat array of nodes without recursion and does every YAML-level refusal
 * with the same caps as stoke/v1. The second walks the Knative schema by
 * hand: its call depth follows the schema (at most seven levels), whatever
 * the input. Fields are paths as Knative's own validation prints them
 * ("spec.template.metadata.annotations.autoscaling.knative.dev/min-scale").
 *
 * Known gap: pass one repeats spec.c's (the hook there had to stay a few
 * lines while spec.c was being changed elsewhere); the two should become one
 * internal module. */
#include "stoke/knative.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#define API_VERSION "serving.knative.dev/v1"
#define KIND "Service"
#define AS_PREFIX "autoscaling.knative.dev/"
#define MS_PER_S UINT64_C(1000)
#define MS_PER_H (3600 * MS_PER_S)
#define MAX_REPLICAS 10000
#define MAX_STRING 1024
#define MIN_MEMORY (UINT64_C(6) * 1024 * 1024)
#define MAX_CPU_MILLIS UINT64_C(1000000)
#define PATH_MAX_LEN 128

static const char TAG_PREFIX[] = "tag:yaml.org,2002:";

enum kind {
    K_SCALAR,
    K_SEQ,
    K_MAP,
};

struct knode {
    enum kind kind;
    unsigned line, column;
    int first, last, next; /* children (mappings: key, value, ...) and siblings */
    int parent;            /* -1 for the root */
    int name;              /* the key naming it in its mapping (itself for a key), else -1 */
    size_t nchild;
    size_t index; /* a sequence item: its position */
    char *text;   /* scalars: owned */
    bool plain;   /* plain and untagged: YAML would resolve its type */
    bool str_tag; /* quoted, block, or tagged !!str or "!" */
};

struct kctx {
    const char *file;
    struct stoke_diag *err;
    struct knode *n;
    size_t len, cap;
    struct stoke_diag *warns; /* up to STOKE_KNATIVE_MAX_WARNINGS */
    size_t nwarn, dropped;
    /* Autoscaling annotations that are checked against each other. */
    int at_min, at_initial;
    char path_min[PATH_MAX_LEN], path_initial[PATH_MAX_LEN];
};

/* --- errors and warnings ---------------------------------------------------- */

static void vset(const struct kctx *c, struct stoke_diag *d, unsigned line, unsigned column,
                 const char *field, const char *fmt, va_list ap)
    __attribute__((format(printf, 6, 0)));

/* Formats into `d`; the message is cut at the diag's size. */
static void vset(const struct kctx *c, struct stoke_diag *d, unsigned line, unsigned column,
                 const char *field, const char *fmt, va_list ap)
{
    char msg[sizeof(d->message)];

    if (vsnprintf(msg, sizeof(msg), fmt, ap) < 0)
        msg[0] = '\0';
    stoke_diag_set(d, c->file, line, column, field, "%s", msg);
}

static int fail_at(struct kctx *c, unsigned line, unsigned column, const char *field, int err,
                   const char *fmt, ...) __attribute__((format(printf, 6, 7)));

static int fail_at(struct kctx *c, unsigned line, unsigned column, const char *field, int err,
                   const char *fmt, ...)
{
    va_list ap;

    if (c->err) {
        va_start(ap, fmt);
        vset(c, c->err, line, column, field, fmt, ap);
        va_end(ap);
    }
    return err;
}

/* Fails at node `i`, naming `path`. */
static int fail(struct kctx *c, int i, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(struct kctx *c, int i, const char *path, const char *fmt, ...)
{
    va_list ap;

    if (c->err) {
        va_start(ap, fmt);
        vset(c, c->err, c->n[i].line, c->n[i].column, path, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

static int nomem(struct kctx *c)
{
    return fail_at(c, 0, 0, "", -ENOMEM, "out of memory");
}

static int warn(struct kctx *c, int i, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Records a warning at node `i`; returns 0 or -ENOMEM. */
static int warn(struct kctx *c, int i, const char *path, const char *fmt, ...)
{
    va_list ap;

    if (c->nwarn == STOKE_KNATIVE_MAX_WARNINGS) {
        c->dropped++;
        return 0;
    }
    if (!c->warns) {
        c->warns = calloc(STOKE_KNATIVE_MAX_WARNINGS, sizeof(*c->warns));
        if (!c->warns)
            return nomem(c);
    }
    va_start(ap, fmt);
    vset(c, &c->warns[c->nwarn++], c->n[i].line, c->n[i].column, path, fmt, ap);
    va_end(ap);
    return 0;
}

static int unsupported(struct kctx *c, int key, const char *path)
{
    return warn(c, key, path, "not supported by stoke, ignored");
}

/* --- pass 1: events to nodes ------------------------------------------------ */

/* The dotted path of node `i` for YAML-level errors, found by walking up:
 * pass 2 knows its paths as it goes, pass 1 does not. */
static void node_path(const struct kctx *c, int i, char *buf, size_t size)
{
    int chain[2 * STOKE_SPEC_MAX_DEPTH + 2];
    size_t n = 0, pos = 0;

    buf[0] = '\0';
    for (; i >= 0 && n < sizeof(chain) / sizeof(chain[0]); i = c->n[i].parent)
        if (c->n[i].parent >= 0 && (c->n[i].name >= 0 || c->n[c->n[i].parent].kind == K_SEQ))
            chain[n++] = i;
    while (n > 0 && pos < size) {
        const struct knode *nd = &c->n[chain[--n]];
        int w = nd->name >= 0 ? snprintf(buf + pos, size - pos, "%s%s", pos ? "." : "",
                                         c->n[nd->name].text ? c->n[nd->name].text : "*")
                              : snprintf(buf + pos, size - pos, "[%zu]", nd->index);
        if (w < 0)
            break;
        pos += (size_t)w;
    }
}

static int fail_yaml(struct kctx *c, int i, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail_yaml(struct kctx *c, int i, const char *fmt, ...)
{
    char field[sizeof(c->err->field)];
    va_list ap;

    if (c->err) {
        node_path(c, i, field, sizeof(field));
        va_start(ap, fmt);
        vset(c, c->err, c->n[i].line, c->n[i].column, field, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

static unsigned mark_num(size_t v)
{
    return v >= UINT_MAX ? UINT_MAX : (unsigned)v + 1;
}

/* libyaml's reader errors carry a byte offset: count lines and columns (in
 * characters) up to it as its scanner would. */
static void offset_mark(const char *buf, size_t off, unsigned *line, unsigned *column)
{
    const unsigned char *p = (const unsigned char *)buf;
    size_t l = 0, col = 0;

    for (size_t i = 0; i < off;) {
        size_t w = 1;
        bool brk = p[i] == '\n' || p[i] == '\r';
        if (p[i] == '\r' && i + 1 < off && p[i + 1] == '\n')
            w = 2;
        else if (p[i] == 0xC2 && i + 1 < off && p[i + 1] == 0x85)
            brk = true, w = 2;
        else if (p[i] == 0xE2 && i + 2 < off && p[i + 1] == 0x80 &&
                 (p[i + 2] == 0xA8 || p[i + 2] == 0xA9))
            brk = true, w = 3;
        else if (p[i] >= 0xC0)
            w = p[i] >= 0xF0 ? 4 : p[i] >= 0xE0 ? 3 : 2;
        if (i + w > off)
            break;
        l = brk ? l + 1 : l;
        col = brk ? 0 : col + 1;
        i += w;
    }
    *line = mark_num(l);
    *column = mark_num(col);
}

/* The messages are stoke/v1's, word for word (tests/unit/test_knative.c
 * compares them). */
static int yaml_error(struct kctx *c, const yaml_parser_t *p, const char *buf, size_t len)
{
    const char *problem = p->problem ? p->problem : "unknown error";
    const char *what = strstr(problem, "UTF-8") ? "not valid UTF-8" : "not valid YAML text";
    unsigned line, column;

    if (p->error == YAML_MEMORY_ERROR)
        return nomem(c);
    if (p->error == YAML_READER_ERROR) {
        offset_mark(buf, p->problem_offset > len ? len : p->problem_offset, &line, &column);
        if (p->problem_value >= 0)
            return fail_at(c, line, column, "", -EINVAL, "%s: %s (byte 0x%02X)", what, problem,
                           (unsigned)p->problem_value);
        return fail_at(c, line, column, "", -EINVAL, "%s: %s", what, problem);
    }
    line = mark_num(p->problem_mark.line);
    column = mark_num(p->problem_mark.column);
    if (p->context)
        return fail_at(c, line, column, "", -EINVAL,
                       "YAML syntax error: %s (%s at line %u, column %u)", problem, p->context,
                       mark_num(p->context_mark.line), mark_num(p->context_mark.column));
    return fail_at(c, line, column, "", -EINVAL, "YAML syntax error: %s", problem);
}

static bool is_tag(const char *tag, const char *name)
{
    size_t n = sizeof(TAG_PREFIX) - 1;
    return strncmp(tag, TAG_PREFIX, n) == 0 && strcmp(tag + n, name) == 0;
}

/* The tags stoke/v1 allows, and no others. */
static int tag_check(struct kctx *c, int i, const yaml_char_t *utag)
{
    const char *tag = (const char *)utag;
    struct knode *nd = &c->n[i];
    bool ok = false;

    if (!tag)
        return 0;
    if (nd->kind == K_SCALAR) {
        ok = strcmp(tag, "!") == 0 || is_tag(tag, "str") || is_tag(tag, "int");
        nd->plain = false;
        nd->str_tag = !is_tag(tag, "int");
    } else {
        ok = is_tag(tag, nd->kind == K_SEQ ? "seq" : "map");
    }
    if (ok)
        return 0;
    if (strncmp(tag, TAG_PREFIX, sizeof(TAG_PREFIX) - 1) == 0)
        return fail_yaml(c, i, "tag \"!!%.64s\" is not allowed here", tag + sizeof(TAG_PREFIX) - 1);
    return fail_yaml(c, i, "tag \"%.64s\" is not allowed", tag);
}

struct keyent {
    const char *text;
    int node;
};

static int cmp_keyent(const void *a, const void *b)
{
    const struct keyent *x = a, *y = b;
    int r = strcmp(x->text, y->text);
    return r ? r : (x->node > y->node) - (x->node < y->node);
}

/* Refuses the earliest key of mapping `m` that repeats another. */
static int no_duplicates(struct kctx *c, int m)
{
    size_t n = 0, run = 0, cnt = c->n[m].nchild / 2;
    struct keyent *k;
    int dup = -1, orig = -1, r = 0;

    if (cnt < 2)
        return 0;
    k = malloc(cnt * sizeof(*k));
    if (!k)
        return nomem(c);
    for (int i = c->n[m].first; i >= 0; i = c->n[c->n[i].next].next, n++)
        k[n] = (struct keyent){c->n[i].text, i};
    qsort(k, n, sizeof(*k), cmp_keyent);
    for (size_t i = 1; i < n; i++) {
        if (strcmp(k[i].text, k[i - 1].text) != 0)
            run = i;
        else if (dup < 0 || k[i].node < dup)
            dup = k[i].node, orig = k[run].node;
    }
    if (dup >= 0)
        r = fail_yaml(c, dup, "duplicate key \"%.64s\" (first at line %u, column %u)",
                      c->n[dup].text, c->n[orig].line, c->n[orig].column);
    free(k);
    return r;
}

static int add_node(struct kctx *c, int parent, enum kind kind, const yaml_mark_t *mark, int *ret)
{
    struct knode *nd;
    int i;

    if (c->len >= STOKE_SPEC_MAX_NODES)
        return fail_at(c, mark_num(mark->line), mark_num(mark->column), "", -EINVAL,
                       "too many YAML nodes (the limit is %d)", STOKE_SPEC_MAX_NODES);
    if (c->len == c->cap) {
        size_t ncap = c->cap ? c->cap * 2 : 64;
        struct knode *nn = realloc(c->n, ncap * sizeof(*nn));
        if (!nn)
            return nomem(c);
        c->n = nn;
        c->cap = ncap;
    }
    i = (int)c->len++;
    nd = &c->n[i];
    *nd = (struct knode){
        .kind = kind, .first = -1, .last = -1, .next = -1, .parent = parent, .name = -1};
    nd->line = mark_num(mark->line);
    nd->column = mark_num(mark->column);
    if (parent >= 0) {
        struct knode *p = &c->n[parent];
        bool is_key = p->kind == K_MAP && p->nchild % 2 == 0;
        if (p->kind == K_SEQ)
            nd->index = p->nchild;
        else if (kind == K_SCALAR || !is_key)
            nd->name = is_key ? i : p->last;
        if (p->last >= 0)
            c->n[p->last].next = i;
        else
            p->first = i;
        p->last = i;
        p->nchild++;
        if (is_key && kind != K_SCALAR)
            return fail_yaml(c, i, "mapping keys must be strings, not %s",
                             kind == K_MAP ? "mappings" : "sequences");
    }
    *ret = i;
    return 0;
}

static int build(struct kctx *c, const char *buf, size_t len)
{
    yaml_parser_t parser;
    yaml_event_t ev;
    int stack[STOKE_SPEC_MAX_DEPTH];
    size_t depth = 0;
    unsigned docs = 0;
    bool have = false, done = false;
    int r = 0;

    if (len >= 3 && memcmp(buf, "\xEF\xBB\xBF", 3) == 0)
        buf += 3, len -= 3;
    if (!yaml_parser_initialize(&parser))
        return nomem(c);
    yaml_parser_set_input_string(&parser, (const unsigned char *)buf, len);
    yaml_parser_set_encoding(&parser, YAML_UTF8_ENCODING);
    while (!done && r >= 0) {
        int parent = depth ? stack[depth - 1] : -1, i = -1;

        if (!yaml_parser_parse(&parser, &ev)) {
            r = yaml_error(c, &parser, buf, len);
            break;
        }
        have = true;
        switch (ev.type) {
        case YAML_STREAM_END_EVENT:
            done = true;
            break;
        case YAML_DOCUMENT_START_EVENT:
            if (++docs > 1)
                r = fail_at(c, mark_num(ev.start_mark.line), mark_num(ev.start_mark.column), "",
                            -EINVAL, "a second YAML document: a spec file holds one document");
            break;
        case YAML_ALIAS_EVENT:
            r = add_node(c, parent, K_SCALAR, &ev.start_mark, &i);
            if (r >= 0)
                r = fail_yaml(c, i, "aliases are not allowed (\"*%.64s\")",
                              (const char *)ev.data.alias.anchor);
            break;
        case YAML_SCALAR_EVENT:
            r = add_node(c, parent, K_SCALAR, &ev.start_mark, &i);
            if (r < 0)
                break;
            c->n[i].text = strndup((const char *)ev.data.scalar.value, ev.data.scalar.length);
            if (!c->n[i].text) {
                r = nomem(c);
                break;
            }
            c->n[i].plain = ev.data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
            c->n[i].str_tag = !c->n[i].plain;
            if (strlen(c->n[i].text) != ev.data.scalar.length)
                r = fail_yaml(c, i, "NUL characters are not allowed");
            else
                r = tag_check(c, i, ev.data.scalar.tag);
            break;
        case YAML_SEQUENCE_START_EVENT:
        case YAML_MAPPING_START_EVENT: {
            bool map = ev.type == YAML_MAPPING_START_EVENT;
            r = add_node(c, parent, map ? K_MAP : K_SEQ, &ev.start_mark, &i);
            if (r >= 0)
                r = tag_check(c, i, map ? ev.data.mapping_start.tag : ev.data.sequence_start.tag);
            if (r >= 0 && depth == STOKE_SPEC_MAX_DEPTH)
                r = fail_yaml(c, i, "nested deeper than %d levels", STOKE_SPEC_MAX_DEPTH);
            if (r >= 0)
                stack[depth++] = i;
            break;
        }
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT:
            assert(depth > 0);
            depth--;
            if (ev.type == YAML_MAPPING_END_EVENT)
                r = no_duplicates(c, stack[depth]);
            break;
        default:
            break;
        }
        yaml_event_delete(&ev);
        have = false;
    }
    if (have)
        yaml_event_delete(&ev);
    if (r >= 0 && docs == 0)
        r = fail_at(c, 1, 1, "", -EINVAL, "the file is empty: no YAML document");
    yaml_parser_delete(&parser);
    return r;
}

/* --- pass 2: helpers ---------------------------------------------------------- */

static bool is_null(const struct knode *nd)
{
    static const char *const nulls[] = {"", "~", "null", "Null", "NULL"};

    for (size_t i = 0; nd->kind == K_SCALAR && nd->plain && i < 5; i++)
        if (strcmp(nd->text, nulls[i]) == 0)
            return true;
    return false;
}

static const char *kind_name(const struct knode *nd)
{
    if (nd->kind == K_MAP)
        return "a mapping";
    if (nd->kind == K_SEQ)
        return "a sequence";
    return is_null(nd) ? "nothing (null)" : "a scalar";
}

/* Field paths are only for messages: a long one is cut short quietly. */
static void join(char *out, const char *path, const char *key)
{
    if (snprintf(out, PATH_MAX_LEN, "%s%s%s", path, path[0] ? "." : "", key) < 0)
        out[0] = '\0';
}

static void join_index(char *out, const char *path, size_t i)
{
    if (snprintf(out, PATH_MAX_LEN, "%s[%zu]", path, i) < 0)
        out[0] = '\0';
}

/* A mapping (or null, an empty section), else an error. */
static int want_map(struct kctx *c, int i, const char *path)
{
    if (c->n[i].kind == K_MAP || is_null(&c->n[i]))
        return 0;
    return fail(c, i, path, "expected a mapping, found %s", kind_name(&c->n[i]));
}

static int want_seq(struct kctx *c, int i, const char *path)
{
    if (c->n[i].kind == K_SEQ || is_null(&c->n[i]))
        return 0;
    return fail(c, i, path, "expected a sequence, found %s", kind_name(&c->n[i]));
}

static int want_text(struct kctx *c, int i, const char *path, const char *what, const char **ret)
{
    if (c->n[i].kind != K_SCALAR || is_null(&c->n[i]))
        return fail(c, i, path, "expected %s, found %s", what, kind_name(&c->n[i]));
    *ret = c->n[i].text;
    return 0;
}

/* The first key of a mapping, -1 for none or null; next key after `k`. */
static int first_key(const struct kctx *c, int m)
{
    return c->n[m].kind == K_MAP ? c->n[m].first : -1;
}

static int next_key(const struct kctx *c, int k)
{
    return c->n[c->n[k].next].next;
}

static int lookup(const struct kctx *c, int m, const char *key)
{
    for (int k = first_key(c, m); k >= 0; k = next_key(c, k))
        if (strcmp(c->n[k].text, key) == 0)
            return c->n[k].next;
    return -1;
}

/* A Kubernetes integer field: plain digits, as the API server would take. */
static int get_int(struct kctx *c, int i, const char *path, uint64_t lo, uint64_t hi, uint64_t *ret)
{
    const struct knode *nd = &c->n[i];
    const char *t = nd->text;
    uint64_t v = 0;

    if (nd->kind != K_SCALAR || is_null(nd))
        return fail(c, i, path, "expected an integer, found %s", kind_name(nd));
    if (nd->str_tag)
        return fail(c, i, path, "expected an integer, found the string \"%.32s\"", t);
    if (t[0] == '-' && t[1])
        return fail(c, i, path, "must not be negative (found %.32s)", t);
    if (!t[0] || strspn(t, "0123456789") != strlen(t))
        return fail(c, i, path, "expected a decimal integer, found \"%.32s\"", t);
    if (t[0] == '0' && t[1])
        return fail(c, i, path, "leading zeros are not allowed (\"%.32s\")", t);
    for (; *t && v <= hi; t++)
        v = v * 10 + (uint64_t)(*t - '0');
    if (*t || v < lo || v > hi)
        return fail(c, i, path, "must be between %" PRIu64 " and %" PRIu64 " (found %.32s)", lo, hi,
                    nd->text);
    *ret = v;
    return 0;
}

static bool is_token(const char *s)
{
    for (; *s; s++)
        if (*s < 0x21 || *s > 0x7e)
            return false;
    return true;
}

static int set_string(struct kctx *c, int i, const char *path, char **dst, bool is_path)
{
    const char *t = NULL;
    int r = want_text(c, i, path, "a string", &t);
    char *d;

    if (r < 0)
        return r;
    if (!t[0])
        return fail(c, i, path, "must not be empty");
    if (is_path && t[0] != '/')
        return fail(c, i, path, "must start with '/' (found \"%.64s\")", t);
    if (strlen(t) > MAX_STRING || !is_token(t))
        return fail(c, i, path,
                    "invalid %s \"%.64s\": at most %d printable ASCII characters without spaces",
                    is_path ? "path" : "image reference", t, MAX_STRING);
    d = strdup(t);
    if (!d)
        return nomem(c);
    free(*dst);
    *dst = d;
    return 0;
}

/* What a key_fn returns besides 0 and -errno. */
enum {
    UNKNOWN = 1,     /* not a field stoke knows: a warning, unless `quiet` */
    UNSUPPORTED = 2, /* known, not supported by stoke: a warning always */
};

/* A mapping whose keys each go to `fn`. */
typedef int (*key_fn)(struct kctx *c, const char *key, int v, const char *path,
                      struct stoke_spec *s);

static int walk(struct kctx *c, int m, const char *path, key_fn fn, bool quiet,
                struct stoke_spec *s)
{
    int r = want_map(c, m, path);

    for (int k = first_key(c, m); r >= 0 && k >= 0; k = next_key(c, k)) {
        char sub[PATH_MAX_LEN];
        join(sub, path, c->n[k].text);
        r = fn(c, c->n[k].text, c->n[k].next, sub, s);
        if (r == UNSUPPORTED || (r == UNKNOWN && !quiet))
            r = unsupported(c, k, sub);
        else if (r == UNKNOWN)
            r = 0;
    }
    return r;
}

static int require(struct kctx *c, int m, const char *path, const char *key)
{
    char sub[PATH_MAX_LEN];

    if (c->n[m].kind == K_MAP && lookup(c, m, key) >= 0)
        return 0;
    join(sub, path, key);
    return fail(c, m, sub, "missing required field \"%s\"", key);
}

/* --- autoscaling annotations ---------------------------------------------------- */

enum avalue {
    A_COUNT,   /* replicas: whole number */
    A_DECIMAL, /* Knative takes a float: rounded to a whole number */
    A_DURATION,
};

/* Knative reads each under its current name and its older camelCase one
 * (still in many manifests and docs); a mapping that holds both is refused
 * rather than guessed. */
struct annotation {
    const char *name, *alt; /* after "autoscaling.knative.dev/" */
    enum avalue type;
    size_t off; /* in struct stoke_scale */
    uint64_t min, max;
};

#define ANN(n, a, t, m, lo, hi)                                                                    \
    {                                                                                              \
        (n), (a), (t), offsetof(struct stoke_scale, m), (lo), (hi)                                 \
    }

static const struct annotation annotations[] = {
    ANN("min-scale", "minScale", A_COUNT, min, 0, MAX_REPLICAS),
    ANN("max-scale", "maxScale", A_COUNT, max, 0, MAX_REPLICAS),
    ANN("initial-scale", "initialScale", A_COUNT, initial, 0, MAX_REPLICAS),
    ANN("target", "target", A_DECIMAL, target, 1, 1000000),
    ANN("target-utilization-percentage", "targetUtilizationPercentage", A_DECIMAL, utilization, 1,
        100),
    ANN("window", "window", A_DURATION, window_ms, 6 * MS_PER_S, MS_PER_H),
    ANN("panic-window-percentage", "panicWindowPercentage", A_DECIMAL, panic_window_percent, 1,
        100),
    ANN("panic-threshold-percentage", "panicThresholdPercentage", A_DECIMAL,
        panic_threshold_percent, 110, 1000),
    ANN("scale-down-delay", "scaleDownDelay", A_DURATION, scale_down_delay_ms, 0, MS_PER_H),
};

/* "<digits>[.<digits>]" rounded half up. Returns 0, or -EINVAL / -ERANGE. */
static int parse_decimal(const char *t, uint64_t *ret, bool *ret_rounded)
{
    uint64_t v = 0;
    const char *p = t;

    for (; *p >= '0' && *p <= '9'; p++) {
        if (v > (UINT64_MAX - 9) / 10)
            return -ERANGE;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    if (p == t)
        return -EINVAL;
    *ret_rounded = false;
    if (*p == '.') {
        const char *f = ++p;
        p += strspn(p, "0123456789");
        if (p == f)
            return -EINVAL;
        *ret_rounded = strspn(f, "0") < (size_t)(p - f);
        if (*f >= '5')
            v++;
    }
    if (*p)
        return -EINVAL;
    *ret = v;
    return 0;
}

static int set_annotation(struct kctx *c, const struct annotation *a, int i, const char *path,
                          struct stoke_spec *s)
{
    const char *t = NULL;
    bool rounded = false;
    uint64_t v = 0;
    char *field = (char *)&s->scale + a->off;
    int r = want_text(c, i, path, "a string", &t);

    if (r < 0)
        return r;
    if (t[0] == '-')
        return fail(c, i, path, "must not be negative (found \"%.32s\")", t);
    if (a->type == A_DURATION) {
        r = stoke_parse_duration(t, &v);
        if (r < 0)
            return fail(c, i, path,
                        "invalid duration \"%.32s\": use numbers with units ms, s, m or h, "
                        "e.g. \"30s\" or \"1m30s\"",
                        t);
    } else {
        r = parse_decimal(t, &v, &rounded);
        if (r == -EINVAL || (a->type == A_COUNT && strchr(t, '.')))
            return fail(c, i, path, "expected %s, found \"%.32s\"",
                        a->type == A_COUNT ? "a whole number" : "a number", t);
    }
    if (r < 0 || v < a->min || v > a->max) {
        if (a->type == A_DURATION)
            return fail(c, i, path,
                        "must be between %" PRIu64 "s and %" PRIu64 "s (found \"%.32s\")",
                        a->min / MS_PER_S, a->max / MS_PER_S, t);
        return fail(c, i, path, "must be between %" PRIu64 " and %" PRIu64 " (found \"%.32s\")",
                    a->min, a->max, t);
    }
    if (a->type == A_DURATION)
        *(uint64_t *)(void *)field = v;
    else
        *(uint32_t *)(void *)field = (uint32_t)v;
    if (rounded)
        return warn(c, i, path, "rounded to %" PRIu64 ": stoke takes whole numbers", v);
    return 0;
}

/* One annotations mapping: the Service's or its template's. */
static int walk_annotations(struct kctx *c, int m, const char *path, struct stoke_spec *s)
{
    int seen[sizeof(annotations) / sizeof(annotations[0])]; /* key nodes in this mapping */
    int r = want_map(c, m, path);

    for (size_t j = 0; j < sizeof(seen) / sizeof(seen[0]); j++)
        seen[j] = -1;
    for (int k = first_key(c, m); r >= 0 && k >= 0; k = next_key(c, k)) {
        const char *key = c->n[k].text;
        int v = c->n[k].next;
        char sub[PATH_MAX_LEN];
        const char *t = NULL;
        const struct annotation *a = NULL;

        join(sub, path, key);
        r = want_text(c, v, sub, "a string", &t);
        if (r < 0)
            break;
        if (strncmp(key, AS_PREFIX, sizeof(AS_PREFIX) - 1) == 0) {
            const char *name = key + sizeof(AS_PREFIX) - 1;
            for (size_t j = 0; j < sizeof(annotations) / sizeof(annotations[0]); j++)
                if (strcmp(name, annotations[j].name) == 0 || strcmp(name, annotations[j].alt) == 0)
                    a = &annotations[j];
            if (a && seen[a - annotations] >= 0)
                return fail(c, k, sub, "also set as \"%.64s\" at line %u: keep one",
                            c->n[seen[a - annotations]].text, c->n[seen[a - annotations]].line);
            if (a) {
                seen[a - annotations] = k;
                r = set_annotation(c, a, v, sub, s);
                if (a->off == offsetof(struct stoke_scale, min))
                    c->at_min = v, memcpy(c->path_min, sub, sizeof(sub));
                else if (a->off == offsetof(struct stoke_scale, initial))
                    c->at_initial = v, memcpy(c->path_initial, sub, sizeof(sub));
            } else if (strcmp(name, "class") == 0 &&
                       strcmp(t, "kpa.autoscaling.knative.dev") == 0) {
                r = 0; /* stoke's autoscaler is the KPA */
            } else if (strcmp(name, "metric") == 0 && strcmp(t, "concurrency") == 0) {
                r = 0;
            } else {
                r = unsupported(c, k, sub);
            }
        } else if (strstr(key, "knative.dev/") && strcmp(key, "serving.knative.dev/creator") != 0 &&
                   strcmp(key, "serving.knative.dev/lastModifier") != 0) {
            /* Other Knative settings change behaviour stoke does not have;
             * the two above are written by Knative itself, to say who. */
            r = unsupported(c, k, sub);
        }
        /* Anything else (kubectl's, other tools') is bookkeeping: ignored. */
    }
    return r;
}

/* Knative's own checks between scale bounds, at the value written last. */
static int check_scale(struct kctx *c, struct stoke_spec *s)
{
    const struct stoke_scale *sc = &s->scale;

    /* A default min (0) or initial (1) never exceeds a max that is set. */
    if (sc->max && sc->min > sc->max)
        return fail(c, c->at_min, c->path_min,
                    "min-scale (%u) must not be greater than max-scale (%u)", sc->min, sc->max);
    if (sc->max && sc->initial > sc->max)
        return fail(c, c->at_initial, c->path_initial,
                    "initial-scale (%u) must not be greater than max-scale (%u)", sc->initial,
                    sc->max);
    return 0;
}

/* --- the container ---------------------------------------------------------- */

static bool is_env_name(const char *s)
{
    if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || *s == '_'))
        return false;
    return strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_") ==
           strlen(s);
}

static int env_entry(struct kctx *c, int item, const char *path, struct stoke_spec *s)
{
    int r = want_map(c, item, path), name = -1, value = -1;
    char sub[PATH_MAX_LEN];
    struct stoke_env_var *e;

    for (int k = first_key(c, item); r >= 0 && k >= 0; k = next_key(c, k)) {
        const char *key = c->n[k].text;
        join(sub, path, key);
        if (strcmp(key, "name") == 0)
            name = c->n[k].next;
        else if (strcmp(key, "value") == 0)
            value = c->n[k].next;
        else
            r = unsupported(c, k, sub); /* valueFrom and anything else */
    }
    if (r < 0)
        return r;
    r = require(c, item, path, "name");
    join(sub, path, "name");
    if (r >= 0)
        r = want_text(c, name, sub, "a string", &(const char *){NULL});
    if (r < 0)
        return r;
    if (!is_env_name(c->n[name].text))
        return fail(c, name, sub,
                    "invalid environment variable name \"%.64s\": use letters, digits and '_', "
                    "not starting with a digit",
                    c->n[name].text);
    if (strcmp(c->n[name].text, "PORT") == 0)
        return fail(c, name, sub, "PORT is set by stoke from ports[0].containerPort");
    for (size_t j = 0; j < s->env_len; j++)
        if (strcmp(s->env[j].name, c->n[name].text) == 0)
            return fail(c, name, sub, "duplicate environment variable \"%.64s\"", c->n[name].text);
    if (value >= 0 && c->n[value].kind != K_SCALAR) {
        join(sub, path, "value");
        return fail(c, value, sub, "expected a string, found %s", kind_name(&c->n[value]));
    }
    if (value < 0 && lookup(c, item, "valueFrom") >= 0)
        return 0; /* warned above: the variable is left out */
    e = &s->env[s->env_len];
    e->name = strdup(c->n[name].text);
    e->value = strdup(value < 0 || is_null(&c->n[value]) ? "" : c->n[value].text);
    s->env_len++;
    return e->name && e->value ? 0 : nomem(c);
}

static int walk_env(struct kctx *c, int seq, const char *path, struct stoke_spec *s)
{
    int r = want_seq(c, seq, path);
    size_t i = 0;

    if (r < 0 || c->n[seq].kind != K_SEQ || c->n[seq].nchild == 0)
        return r;
    if (c->n[seq].nchild > STOKE_SPEC_MAX_ENV)
        return fail(c, seq, path, "too many environment variables (the limit is %d)",
                    STOKE_SPEC_MAX_ENV);
    s->env = calloc(c->n[seq].nchild, sizeof(*s->env));
    if (!s->env)
        return nomem(c);
    for (int it = c->n[seq].first; r >= 0 && it >= 0; it = c->n[it].next, i++) {
        char sub[PATH_MAX_LEN];
        join_index(sub, path, i);
        r = env_entry(c, it, sub, s);
    }
    return r;
}

/* resources.limits: stoke's memory and CPU limits, with stoke's bounds. */
static const struct quantity {
    const char *key, *what, *hint, *range;
    int (*parse)(const char *s, uint64_t *ret);
    uint64_t min, max;
    size_t off; /* in struct stoke_spec */
} quantities[] = {
    {"memory", "memory quantity", "use bytes or a number with Ki, Mi, Gi, Ti, k, M, G or T",
     "must be at least 6Mi, Docker's smallest memory limit", stoke_parse_memory, MIN_MEMORY,
     UINT64_MAX, offsetof(struct stoke_spec, resources.memory_bytes)},
    {"cpu", "CPU quantity", "use cores (\"1\", \"0.5\") or millicores (\"500m\")",
     "must be between 1m and 1000 cores", stoke_parse_cpu, 1, MAX_CPU_MILLIS,
     offsetof(struct stoke_spec, resources.cpu_millis)},
};

static int limits_key(struct kctx *c, const char *key, int v, const char *path,
                      struct stoke_spec *s)
{
    for (size_t j = 0; j < sizeof(quantities) / sizeof(quantities[0]); j++) {
        const struct quantity *q = &quantities[j];
        const char *t = NULL;
        uint64_t x = 0;
        int r;

        if (strcmp(key, q->key) != 0)
            continue;
        r = want_text(c, v, path, q->what, &t);
        if (r < 0)
            return r;
        if (t[0] == '-')
            return fail(c, v, path, "must not be negative (found \"%.32s\")", t);
        if (q->parse(t, &x) < 0)
            return fail(c, v, path, "invalid %s \"%.32s\": %s", q->what, t, q->hint);
        if (x < q->min || x > q->max)
            return fail(c, v, path, "%s (found \"%.32s\")", q->range, t);
        *(uint64_t *)(void *)((char *)s + q->off) = x;
        return 0;
    }
    return UNKNOWN;
}

static int resources_key(struct kctx *c, const char *key, int v, const char *path,
                         struct stoke_spec *s)
{
    if (strcmp(key, "limits") == 0)
        return walk(c, v, path, limits_key, false, s);
    return UNKNOWN; /* requests, claims */
}

static int http_get_key(struct kctx *c, const char *key, int v, const char *path,
                        struct stoke_spec *s)
{
    if (strcmp(key, "path") == 0)
        return set_string(c, v, path, &s->readiness.path, true);
    return UNKNOWN; /* port, host, scheme, httpHeaders */
}

static int probe_key(struct kctx *c, const char *key, int v, const char *path, struct stoke_spec *s)
{
    if (strcmp(key, "httpGet") == 0)
        return walk(c, v, path, http_get_key, false, s);
    return UNKNOWN; /* tcpSocket, exec, grpc, periods, thresholds */
}

static int port_key(struct kctx *c, const char *key, int v, const char *path, struct stoke_spec *s)
{
    uint64_t x = 0;
    int r;

    if (strcmp(key, "containerPort") == 0) {
        r = get_int(c, v, path, 1, 65535, &x);
        s->port = (uint16_t)x;
        return r;
    }
    /* Names a protocol: "http1" (or none) is what stoke speaks; "h2c" not. */
    if (strcmp(key, "name") == 0 && c->n[v].kind == K_SCALAR && strcmp(c->n[v].text, "h2c") != 0)
        return 0;
    if (strcmp(key, "protocol") == 0 && c->n[v].kind == K_SCALAR &&
        strcmp(c->n[v].text, "TCP") == 0)
        return 0;
    return UNKNOWN;
}

static int walk_ports(struct kctx *c, int seq, const char *path, struct stoke_spec *s)
{
    char sub[PATH_MAX_LEN];
    int r = want_seq(c, seq, path);

    if (r < 0 || c->n[seq].kind != K_SEQ || c->n[seq].nchild == 0)
        return r;
    if (c->n[seq].nchild > 1) {
        join_index(sub, path, 1);
        return fail(c, c->n[c->n[seq].first].next, sub,
                    "only one port can be set: stoke sends traffic to one (found %zu)",
                    c->n[seq].nchild);
    }
    join_index(sub, path, 0);
    return walk(c, c->n[seq].first, sub, port_key, false, s);
}

static int container_key(struct kctx *c, const char *key, int v, const char *path,
                         struct stoke_spec *s)
{
    if (strcmp(key, "image") == 0)
        return set_string(c, v, path, &s->image, false);
    if (strcmp(key, "name") == 0)
        return 0; /* a label inside the pod: stoke runs only this one */
    if (strcmp(key, "ports") == 0)
        return walk_ports(c, v, path, s);
    if (strcmp(key, "env") == 0)
        return walk_env(c, v, path, s);
    if (strcmp(key, "resources") == 0)
        return walk(c, v, path, resources_key, false, s);
    if (strcmp(key, "readinessProbe") == 0)
        return walk(c, v, path, probe_key, false, s);
    return UNKNOWN;
}

static int walk_containers(struct kctx *c, int seq, const char *path, struct stoke_spec *s)
{
    char sub[PATH_MAX_LEN];
    int r = want_seq(c, seq, path);

    if (r < 0)
        return r;
    if (c->n[seq].kind != K_SEQ || c->n[seq].nchild == 0)
        return fail(c, seq, path, "one container is required");
    if (c->n[seq].nchild > 1) {
        join_index(sub, path, 1);
        return fail(c, c->n[c->n[seq].first].next, sub,
                    "stoke runs one container per function (found %zu)", c->n[seq].nchild);
    }
    join_index(sub, path, 0);
    r = walk(c, c->n[seq].first, sub, container_key, false, s);
    if (r >= 0)
        r = require(c, c->n[seq].first, sub, "image");
    return r;
}

/* --- the Service ------------------------------------------------------------ */

static int revision_key(struct kctx *c, const char *key, int v, const char *path,
                        struct stoke_spec *s)
{
    uint64_t x = 0;
    int r;

    if (strcmp(key, "containers") == 0)
        return walk_containers(c, v, path, s);
    if (strcmp(key, "containerConcurrency") == 0) {
        r = get_int(c, v, path, 0, 1000000, &x);
        s->scale.container_concurrency = (uint32_t)x;
        return r;
    }
    if (strcmp(key, "timeoutSeconds") == 0) {
        r = get_int(c, v, path, 1, MS_PER_H / MS_PER_S, &x);
        s->timeout_ms = x * MS_PER_S;
        return r;
    }
    return UNKNOWN;
}

static int template_meta_key(struct kctx *c, const char *key, int v, const char *path,
                             struct stoke_spec *s)
{
    if (strcmp(key, "annotations") == 0)
        return walk_annotations(c, v, path, s);
    if (strcmp(key, "name") == 0)
        return UNSUPPORTED; /* a revision name: stoke names revisions by hash */
    return UNKNOWN;         /* labels and the like: quiet */
}

static int template_key(struct kctx *c, const char *key, int v, const char *path,
                        struct stoke_spec *s)
{
    if (strcmp(key, "metadata") == 0)
        return walk(c, v, path, template_meta_key, true, s);
    if (strcmp(key, "spec") == 0) {
        int r = walk(c, v, path, revision_key, false, s);
        return r < 0 ? r : require(c, v, path, "containers");
    }
    return UNKNOWN;
}

static int service_spec_key(struct kctx *c, const char *key, int v, const char *path,
                            struct stoke_spec *s)
{
    if (strcmp(key, "template") == 0) {
        int r = walk(c, v, path, template_key, false, s);
        return r < 0 ? r : require(c, v, path, "spec");
    }
    return UNKNOWN; /* traffic */
}

static int metadata_key(struct kctx *c, const char *key, int v, const char *path,
                        struct stoke_spec *s)
{
    const char *t = NULL;
    int r;

    if (strcmp(key, "name") == 0) {
        r = want_text(c, v, path, "a string", &t);
        if (r < 0)
            return r;
        if (!stoke_is_valid_name(t))
            return fail(c, v, path,
                        "invalid name \"%.64s\": use 1 to 63 lowercase letters, digits and '-', "
                        "starting with a letter and not ending with '-'",
                        t);
        memcpy(s->name, t, strlen(t) + 1);
        return 0;
    }
    if (strcmp(key, "annotations") == 0)
        return walk_annotations(c, v, path, s);
    /* namespace, labels, uid, generation...: Kubernetes bookkeeping with no
     * meaning on one machine. */
    return 0;
}

static int root_key(struct kctx *c, const char *key, int v, const char *path, struct stoke_spec *s)
{
    const char *t = NULL;
    int r;

    if (strcmp(key, "apiVersion") == 0 || strcmp(key, "kind") == 0) {
        const char *want = key[0] == 'a' ? API_VERSION : KIND;
        r = want_text(c, v, path, "a string", &t);
        if (r >= 0 && strcmp(t, want) != 0)
            r = fail(c, v, path, "must be \"%s\" (found \"%.64s\")", want, t);
        return r;
    }
    if (strcmp(key, "metadata") == 0)
        return walk(c, v, path, metadata_key, true, s);
    if (strcmp(key, "spec") == 0)
        return walk(c, v, path, service_spec_key, false, s);
    if (strcmp(key, "status") == 0)
        return 0; /* written by Knative, present in `kubectl get -o yaml` */
    return UNKNOWN;
}

static int walk_root(struct kctx *c, struct stoke_spec *s)
{
    static const char *const required[] = {"apiVersion", "kind", "metadata", "spec"};
    const struct knode *root = &c->n[0];
    int r;

    if (root->kind != K_MAP)
        return fail(c, 0, "", "the document must be a mapping, not %s", kind_name(root));
    for (size_t j = 0; j < sizeof(required) / sizeof(required[0]); j++) {
        r = require(c, 0, "", required[j]);
        if (r < 0)
            return r;
    }
    r = walk(c, 0, "", root_key, false, s);
    if (r >= 0)
        r = require(c, lookup(c, 0, "metadata"), "metadata", "name");
    if (r >= 0 && c->n[lookup(c, 0, "spec")].kind == K_MAP)
        r = require(c, lookup(c, 0, "spec"), "spec", "template");
    else if (r >= 0)
        r = fail(c, lookup(c, 0, "spec"), "spec.template", "missing required field \"template\"");
    if (r >= 0)
        r = check_scale(c, s);
    return r;
}

/* --- public ----------------------------------------------------------------- */

bool stoke_knative_is_service(const char *buf, size_t len)
{
    yaml_parser_t parser;
    yaml_event_t ev;
    size_t depth = 0;
    bool api = false, kind = false, is_key = true, done = false;
    int want = 0; /* 1: the next value is apiVersion's, 2: kind's */

    if (!buf || len > STOKE_SPEC_MAX_BYTES || !yaml_parser_initialize(&parser))
        return false;
    if (len >= 3 && memcmp(buf, "\xEF\xBB\xBF", 3) == 0)
        buf += 3, len -= 3;
    yaml_parser_set_input_string(&parser, (const unsigned char *)buf, len);
    yaml_parser_set_encoding(&parser, YAML_UTF8_ENCODING);
    while (!done && !(api && kind) && yaml_parser_parse(&parser, &ev)) {
        switch (ev.type) {
        case YAML_MAPPING_START_EVENT:
        case YAML_SEQUENCE_START_EVENT:
            /* Deeper than stoke allows: the stoke/v1 parser says so. */
            if (++depth > STOKE_SPEC_MAX_DEPTH ||
                (depth == 1 && ev.type != YAML_MAPPING_START_EVENT))
                done = true;
            if (depth == 2)
                is_key = !is_key;
            want = 0;
            break;
        case YAML_MAPPING_END_EVENT:
        case YAML_SEQUENCE_END_EVENT:
            done = --depth == 0;
            break;
        case YAML_SCALAR_EVENT:
        case YAML_ALIAS_EVENT:
            if (depth != 1)
                break;
            if (!is_key && ev.type == YAML_SCALAR_EVENT) {
                const char *t = (const char *)ev.data.scalar.value;
                api = api || (want == 1 && strcmp(t, API_VERSION) == 0);
                kind = kind || (want == 2 && strcmp(t, KIND) == 0);
            }
            want = 0;
            if (is_key && ev.type == YAML_SCALAR_EVENT) {
                const char *t = (const char *)ev.data.scalar.value;
                want = strcmp(t, "apiVersion") == 0 ? 1 : strcmp(t, "kind") == 0 ? 2 : 0;
            }
            is_key = !is_key;
            break;
        case YAML_STREAM_END_EVENT:
            done = true;
            break;
        default:
            break;
        }
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&parser);
    return api && kind;
}

int stoke_knative_parse(const char *buf, size_t len, const char *filename, struct stoke_spec *ret,
                        struct stoke_diag *reterr, stoke_spec_warn_fn warn_cb, void *data)
{
    struct kctx c = {.file = filename ? filename : "", .err = reterr};
    struct stoke_spec s;
    int r;

    c.at_min = c.at_initial = -1;
    memset(ret, 0, sizeof(*ret));
    stoke_spec_defaults(&s);
    if (reterr)
        memset(reterr, 0, sizeof(*reterr));
    if (len > STOKE_SPEC_MAX_BYTES) {
        r = fail_at(&c, 0, 0, "", -EFBIG, "the file is larger than %d bytes", STOKE_SPEC_MAX_BYTES);
        goto out;
    }
    r = build(&c, buf ? buf : "", buf ? len : 0);
    if (r < 0)
        goto out;
    r = walk_root(&c, &s);
    if (r < 0)
        goto out;
    if (c.dropped && c.nwarn) {
        struct stoke_diag *last = &c.warns[c.nwarn - 1];
        (void)snprintf(last->message, sizeof(last->message),
                       "%zu more warnings not shown (the limit is %d)", c.dropped + 1,
                       STOKE_KNATIVE_MAX_WARNINGS);
        last->field[0] = '\0';
    }
    for (size_t j = 0; warn_cb && j < c.nwarn; j++)
        warn_cb(&c.warns[j], data);
    *ret = s;
    memset(&s, 0, sizeof(s));
out:
    stoke_spec_done(&s);
    for (size_t j = 0; j < c.len; j++)
        free(c.n[j].text);
    free(c.n);
    free(c.warns);
    return r;
}
