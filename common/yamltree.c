/* YAML events to a node tree, with the refusals both spec schemas share
 * (common/yamltree.h). */
#include "yamltree.h"

#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "stoke/spec.h"

static const char YAML_TAG_PREFIX[] = "tag:yaml.org,2002:";

/* --- diagnostics ------------------------------------------------------------ */

void stoke__yaml_path(const struct stoke__yaml *y, int i, const char *extra, char *buf, size_t size)
{
    /* A node has at most STOKE_SPEC_MAX_DEPTH + 1 ancestors (the deepest
     * collection is refused once it is added), each at most one link. */
    int chain[STOKE_SPEC_MAX_DEPTH * 2 + 4];
    size_t n = 0, pos = 0;

    buf[0] = '\0';
    while (i >= 0 && n < sizeof(chain) / sizeof(chain[0])) {
        const struct stoke__yaml_node *nd = &y->nodes[i];
        if (nd->key >= 0 || (nd->parent >= 0 && y->nodes[nd->parent].kind == STOKE__YAML_SEQ))
            chain[n++] = i;
        i = nd->parent;
    }
    while (n > 0 && pos < size) {
        const struct stoke__yaml_node *nd = &y->nodes[chain[--n]];
        int w;
        if (nd->key >= 0)
            w = snprintf(buf + pos, size - pos, "%s%s", pos ? "." : "",
                         y->nodes[nd->key].text ? y->nodes[nd->key].text : "*");
        else
            w = snprintf(buf + pos, size - pos, "[%zu]", nd->index);
        if (w < 0)
            break;
        pos += (size_t)w;
    }
    if (extra && pos < size)
        (void)snprintf(buf + pos, size - pos, "%s%s", pos ? "." : "", extra);
}

static void vset(const struct stoke__yaml *y, struct stoke_diag *d, unsigned line, unsigned column,
                 const char *field, const char *fmt, va_list ap)
    __attribute__((format(printf, 6, 0)));

/* The message is formatted and cut to the diag's size first, then cleaned by
 * stoke_diag_set(): a message cut inside a UTF-8 character loses that
 * character rather than showing half of it. */
static void vset(const struct stoke__yaml *y, struct stoke_diag *d, unsigned line, unsigned column,
                 const char *field, const char *fmt, va_list ap)
{
    char msg[sizeof(d->message)];

    if (vsnprintf(msg, sizeof(msg), fmt, ap) < 0)
        msg[0] = '\0';
    stoke_diag_set(d, y->file, line, column, field, "%s", msg);
}

int stoke__yaml_fail_at(struct stoke__yaml *y, unsigned line, unsigned column, const char *field,
                        int ret_err, const char *fmt, ...)
{
    va_list ap;

    if (y->err) {
        va_start(ap, fmt);
        vset(y, y->err, line, column, field, fmt, ap);
        va_end(ap);
    }
    return ret_err;
}

void stoke__yaml_vdiag(const struct stoke__yaml *y, struct stoke_diag *d, int i, const char *field,
                       const char *fmt, va_list ap)
{
    char path[sizeof(d->field)];

    if (!field) {
        stoke__yaml_path(y, i, NULL, path, sizeof(path));
        field = path;
    }
    vset(y, d, y->nodes[i].line, y->nodes[i].column, field, fmt, ap);
}

int stoke__yaml_fail(struct stoke__yaml *y, int i, const char *field, const char *fmt, ...)
{
    va_list ap;

    if (y->err) {
        va_start(ap, fmt);
        stoke__yaml_vdiag(y, y->err, i, field, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

int stoke__yaml_oom(struct stoke__yaml *y)
{
    return stoke__yaml_fail_at(y, 0, 0, "", -ENOMEM, "out of memory");
}

int stoke__yaml_too_big(struct stoke__yaml *y)
{
    return stoke__yaml_fail_at(y, 0, 0, "", -EFBIG, "the file is larger than %d bytes",
                               STOKE_SPEC_MAX_BYTES);
}

/* --- events to tree --------------------------------------------------------- */

void stoke__yaml_init(struct stoke__yaml *y, const char *file, struct stoke_diag *err)
{
    memset(y, 0, sizeof(*y));
    y->file = file ? file : "";
    y->err = err;
}

void stoke__yaml_done(struct stoke__yaml *y)
{
    for (size_t i = 0; i < y->len; i++)
        free(y->nodes[i].text);
    free(y->nodes);
    y->nodes = NULL;
    y->len = y->cap = 0;
}

static unsigned mark_num(size_t v)
{
    return v >= UINT_MAX ? UINT_MAX : (unsigned)v + 1;
}

/* libyaml's reader reports a byte offset, not a line and column: count them
 * the way its scanner does (columns in characters; \n, \r\n, \r, NEL, LS and
 * PS end lines) so the position matches the other errors. */
static void offset_to_mark(const char *buf, size_t len, size_t off, unsigned *line,
                           unsigned *column)
{
    const unsigned char *p = (const unsigned char *)buf;
    size_t l = 0, col = 0, i = 0;

    if (off > len)
        off = len;
    while (i < off) {
        size_t w = 1;
        bool brk = false;
        if (p[i] == '\n') {
            brk = true;
        } else if (p[i] == '\r') {
            brk = true;
            if (i + 1 < off && p[i + 1] == '\n')
                w = 2;
        } else if (p[i] == 0xC2 && i + 1 < off && p[i + 1] == 0x85) {
            brk = true;
            w = 2;
        } else if (p[i] == 0xE2 && i + 2 < off && p[i + 1] == 0x80 &&
                   (p[i + 2] == 0xA8 || p[i + 2] == 0xA9)) {
            brk = true;
            w = 3;
        } else if (p[i] >= 0xC0) {
            /* A UTF-8 lead byte: the whole character is one column. */
            w = p[i] >= 0xF0 ? 4 : p[i] >= 0xE0 ? 3 : 2;
            /* libyaml points at a bad trailing byte; name the character it
             * was meant to continue instead. */
            if (i + w > off)
                break;
        }
        if (brk) {
            l++;
            col = 0;
        } else {
            col++;
        }
        i += w;
    }
    *line = mark_num(l);
    *column = mark_num(col);
}

static int yaml_failure(struct stoke__yaml *y, const yaml_parser_t *p, const char *buf, size_t len)
{
    unsigned line, column;
    const char *problem = p->problem ? p->problem : "unknown error";
    const char *what;

    switch (p->error) {
    case YAML_MEMORY_ERROR:
        return stoke__yaml_oom(y);
    case YAML_READER_ERROR:
        offset_to_mark(buf, len, p->problem_offset, &line, &column);
        what = strstr(problem, "UTF-8") ? "not valid UTF-8" : "not valid YAML text";
        if (p->problem_value >= 0)
            return stoke__yaml_fail_at(y, line, column, "", -EINVAL, "%s: %s (byte 0x%02X)", what,
                                       problem, (unsigned)p->problem_value);
        return stoke__yaml_fail_at(y, line, column, "", -EINVAL, "%s: %s", what, problem);
    default:
        line = mark_num(p->problem_mark.line);
        column = mark_num(p->problem_mark.column);
        if (p->context)
            return stoke__yaml_fail_at(y, line, column, "", -EINVAL,
                                       "YAML syntax error: %s (%s at line %u, column %u)", problem,
                                       p->context, mark_num(p->context_mark.line),
                                       mark_num(p->context_mark.column));
        return stoke__yaml_fail_at(y, line, column, "", -EINVAL, "YAML syntax error: %s", problem);
    }
}

static bool tag_is(const char *tag, const char *name)
{
    size_t n = sizeof(YAML_TAG_PREFIX) - 1;
    return strncmp(tag, YAML_TAG_PREFIX, n) == 0 && strcmp(tag + n, name) == 0;
}

/* Only the standard tags that agree with the node are allowed: !!str, !!int
 * or the non-specific "!" on scalars, !!map on mappings, !!seq on sequences.
 * Anything else would ask for a type stoke has no use for. */
static int check_tag(struct stoke__yaml *y, int i, const yaml_char_t *utag)
{
    const char *tag = (const char *)utag;
    struct stoke__yaml_node *nd = &y->nodes[i];
    bool ok;

    if (!tag)
        return 0;
    switch (nd->kind) {
    case STOKE__YAML_SCALAR:
        ok = strcmp(tag, "!") == 0 || tag_is(tag, "str") || tag_is(tag, "int");
        nd->plain = false;
        nd->str_tag = !tag_is(tag, "int");
        break;
    case STOKE__YAML_SEQ:
        ok = tag_is(tag, "seq");
        break;
    default:
        ok = tag_is(tag, "map");
        break;
    }
    if (ok)
        return 0;
    if (strncmp(tag, YAML_TAG_PREFIX, sizeof(YAML_TAG_PREFIX) - 1) == 0)
        return stoke__yaml_fail(y, i, NULL, "tag \"!!%.64s\" is not allowed here",
                                tag + sizeof(YAML_TAG_PREFIX) - 1);
    return stoke__yaml_fail(y, i, NULL, "tag \"%.64s\" is not allowed", tag);
}

struct key_ref {
    const char *text;
    int node;
};

static int key_ref_cmp(const void *a, const void *b)
{
    const struct key_ref *x = a, *y = b;
    int r = strcmp(x->text, y->text);
    if (r)
        return r;
    return (x->node > y->node) - (x->node < y->node);
}

/* Refuses the first key (in file order) that repeats an earlier one.
 * Sorting keeps this O(n log n) for mappings with thousands of keys. */
static int check_duplicates(struct stoke__yaml *y, int map)
{
    const struct stoke__yaml_node *m = &y->nodes[map];
    struct key_ref *keys = NULL;
    size_t n = 0;
    size_t run = 0;
    int dup = -1, first = -1;
    int r = 0;

    if (m->nchild < 4)
        return 0;
    keys = calloc(m->nchild / 2, sizeof(*keys));
    if (!keys)
        return stoke__yaml_oom(y);
    for (int k = m->first; k >= 0; k = stoke__yaml_next_key(y, k)) {
        keys[n].text = y->nodes[k].text;
        keys[n].node = k;
        n++;
    }
    qsort(keys, n, sizeof(*keys), key_ref_cmp);
    /* Equal keys sort together in file order: the first of a run is the
     * original, the others repeat it. Report the earliest repeat. */
    for (size_t i = 1; i < n; i++) {
        if (strcmp(keys[i].text, keys[i - 1].text) != 0) {
            run = i;
            continue;
        }
        if (dup < 0 || keys[i].node < dup) {
            dup = keys[i].node;
            first = keys[run].node;
        }
    }
    if (dup >= 0)
        r = stoke__yaml_fail(y, dup, NULL, "duplicate key \"%.64s\" (first at line %u, column %u)",
                             y->nodes[dup].text, y->nodes[first].line, y->nodes[first].column);
    free(keys);
    return r;
}

/* Appends a node under `parent` (-1 for the root). On error nothing needs
 * undoing: the caller frees the whole tree. */
static int node_add(struct stoke__yaml *y, int parent, enum stoke__yaml_kind kind,
                    const yaml_mark_t *mark, int *ret)
{
    struct stoke__yaml_node *nd;
    int i;

    if (y->len >= STOKE_SPEC_MAX_NODES)
        return stoke__yaml_fail_at(y, mark_num(mark->line), mark_num(mark->column), "", -EINVAL,
                                   "too many YAML nodes (the limit is %d)", STOKE_SPEC_MAX_NODES);
    if (y->len == y->cap) {
        size_t ncap = y->cap ? y->cap * 2 : 64;
        struct stoke__yaml_node *n = realloc(y->nodes, ncap * sizeof(*n));
        if (!n)
            return stoke__yaml_oom(y);
        y->nodes = n;
        y->cap = ncap;
    }
    i = (int)y->len++;
    nd = &y->nodes[i];
    memset(nd, 0, sizeof(*nd));
    nd->kind = kind;
    nd->line = mark_num(mark->line);
    nd->column = mark_num(mark->column);
    nd->parent = parent;
    nd->key = -1;
    nd->first = nd->last = nd->next = -1;
    if (parent >= 0) {
        struct stoke__yaml_node *p = &y->nodes[parent];
        if (p->kind == STOKE__YAML_MAP)
            nd->key = p->nchild % 2 == 0 ? i : p->last;
        else
            nd->index = p->nchild;
        if (p->last >= 0)
            y->nodes[p->last].next = i;
        else
            p->first = i;
        p->last = i;
        p->nchild++;
        if (p->kind == STOKE__YAML_MAP && nd->key == i && kind != STOKE__YAML_SCALAR) {
            nd->key = -1; /* no text to name it by: the path is the mapping's */
            return stoke__yaml_fail(y, i, NULL, "mapping keys must be strings, not %s",
                                    kind == STOKE__YAML_MAP ? "mappings" : "sequences");
        }
    }
    *ret = i;
    return 0;
}

/* A scalar event's text into node `i`, refusing NUL and the wrong tags. */
static int add_scalar(struct stoke__yaml *y, int i, const yaml_event_t *ev)
{
    struct stoke__yaml_node *nd = &y->nodes[i];
    size_t n = ev->data.scalar.length;

    nd->text = malloc(n + 1);
    if (!nd->text)
        return stoke__yaml_oom(y);
    memcpy(nd->text, ev->data.scalar.value, n);
    nd->text[n] = '\0';
    nd->plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
    nd->str_tag = !nd->plain;
    if (memchr(nd->text, '\0', n))
        return stoke__yaml_fail(y, i, NULL, "NUL characters are not allowed");
    return check_tag(y, i, ev->data.scalar.tag);
}

int stoke__yaml_build(struct stoke__yaml *y, const char *buf, size_t len)
{
    yaml_parser_t parser;
    yaml_event_t ev;
    bool have_ev = false, done = false;
    int stack[STOKE_SPEC_MAX_DEPTH];
    size_t depth = 0;
    unsigned docs = 0;
    int r = 0;

    if (len > STOKE_SPEC_MAX_BYTES)
        return stoke__yaml_too_big(y);
    if (!buf) {
        buf = "";
        len = 0;
    }
    /* Specs are UTF-8: libyaml is told so rather than left to guess from a
     * byte order mark (and read UTF-16). A UTF-8 BOM is dropped here, since
     * libyaml keeps it as text once the encoding is set; marks then count
     * from after it, as libyaml's own would. */
    if (len >= 3 && memcmp(buf, "\xEF\xBB\xBF", 3) == 0) {
        buf += 3;
        len -= 3;
    }
    if (!yaml_parser_initialize(&parser))
        return stoke__yaml_oom(y);
    yaml_parser_set_input_string(&parser, (const unsigned char *)buf, len);
    yaml_parser_set_encoding(&parser, YAML_UTF8_ENCODING);

    while (!done) {
        int parent = depth ? stack[depth - 1] : -1;
        int i = -1;

        if (!yaml_parser_parse(&parser, &ev)) {
            r = yaml_failure(y, &parser, buf, len);
            goto out;
        }
        have_ev = true;
        switch (ev.type) {
        case YAML_STREAM_END_EVENT:
            done = true;
            break;
        case YAML_DOCUMENT_START_EVENT:
            if (++docs > 1) {
                r = stoke__yaml_fail_at(y, mark_num(ev.start_mark.line),
                                        mark_num(ev.start_mark.column), "", -EINVAL,
                                        "a second YAML document: a spec file holds one document");
                goto out;
            }
            break;
        case YAML_ALIAS_EVENT:
            r = node_add(y, parent, STOKE__YAML_SCALAR, &ev.start_mark, &i);
            if (r >= 0)
                r = stoke__yaml_fail(y, i, NULL, "aliases are not allowed (\"*%.64s\")",
                                     (const char *)ev.data.alias.anchor);
            goto out;
        case YAML_SCALAR_EVENT:
            r = node_add(y, parent, STOKE__YAML_SCALAR, &ev.start_mark, &i);
            if (r >= 0)
                r = add_scalar(y, i, &ev);
            if (r < 0)
                goto out;
            break;
        case YAML_SEQUENCE_START_EVENT:
        case YAML_MAPPING_START_EVENT: {
            bool map = ev.type == YAML_MAPPING_START_EVENT;
            r = node_add(y, parent, map ? STOKE__YAML_MAP : STOKE__YAML_SEQ, &ev.start_mark, &i);
            if (r < 0)
                goto out;
            r = check_tag(y, i, map ? ev.data.mapping_start.tag : ev.data.sequence_start.tag);
            if (r < 0)
                goto out;
            if (depth == STOKE_SPEC_MAX_DEPTH) {
                r = stoke__yaml_fail(y, i, NULL, "nested deeper than %d levels",
                                     STOKE_SPEC_MAX_DEPTH);
                goto out;
            }
            stack[depth++] = i;
            break;
        }
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT:
            assert(depth > 0); /* libyaml pairs start and end events */
            depth--;
            if (ev.type == YAML_MAPPING_END_EVENT) {
                r = check_duplicates(y, stack[depth]);
                if (r < 0)
                    goto out;
            }
            break;
        default:
            break;
        }
        yaml_event_delete(&ev);
        have_ev = false;
    }
    if (docs == 0)
        r = stoke__yaml_fail_at(y, 1, 1, "", -EINVAL, "the file is empty: no YAML document");
out:
    if (have_ev)
        yaml_event_delete(&ev);
    yaml_parser_delete(&parser);
    return r;
}

/* --- reading the tree ------------------------------------------------------- */

bool stoke__yaml_is_null(const struct stoke__yaml_node *nd)
{
    static const char *const nulls[] = {"", "~", "null", "Null", "NULL"};
    if (nd->kind != STOKE__YAML_SCALAR || !nd->plain)
        return false;
    for (size_t i = 0; i < sizeof(nulls) / sizeof(nulls[0]); i++)
        if (strcmp(nd->text, nulls[i]) == 0)
            return true;
    return false;
}

const char *stoke__yaml_kind_name(const struct stoke__yaml_node *nd)
{
    if (nd->kind == STOKE__YAML_MAP)
        return "a mapping";
    if (nd->kind == STOKE__YAML_SEQ)
        return "a sequence";
    return stoke__yaml_is_null(nd) ? "nothing (null)" : "a scalar";
}

int stoke__yaml_first_key(const struct stoke__yaml *y, int m)
{
    return y->nodes[m].kind == STOKE__YAML_MAP ? y->nodes[m].first : -1;
}

int stoke__yaml_next_key(const struct stoke__yaml *y, int k)
{
    return y->nodes[y->nodes[k].next].next;
}

static int want(struct stoke__yaml *y, int i, const char *field, enum stoke__yaml_kind kind)
{
    const struct stoke__yaml_node *nd = &y->nodes[i];

    if (nd->kind == kind || stoke__yaml_is_null(nd))
        return 0;
    return stoke__yaml_fail(y, i, field, "expected %s, found %s",
                            kind == STOKE__YAML_MAP ? "a mapping" : "a sequence",
                            stoke__yaml_kind_name(nd));
}

int stoke__yaml_want_map(struct stoke__yaml *y, int i, const char *field)
{
    return want(y, i, field, STOKE__YAML_MAP);
}

int stoke__yaml_want_seq(struct stoke__yaml *y, int i, const char *field)
{
    return want(y, i, field, STOKE__YAML_SEQ);
}

int stoke__yaml_text(struct stoke__yaml *y, int i, const char *field, const char *what,
                     const char **ret)
{
    const struct stoke__yaml_node *nd = &y->nodes[i];

    if (nd->kind != STOKE__YAML_SCALAR || stoke__yaml_is_null(nd))
        return stoke__yaml_fail(y, i, field, "expected %s, found %s", what,
                                stoke__yaml_kind_name(nd));
    *ret = nd->text;
    return 0;
}

/* --- scalar text both schemas check alike ---------------------------------- */

bool stoke__yaml_is_token(const char *s)
{
    for (; *s; s++)
        if (*s < 0x21 || *s > 0x7e)
            return false;
    return true;
}

bool stoke__yaml_is_env_name(const char *s)
{
    if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || *s == '_'))
        return false;
    for (s++; *s; s++)
        if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') ||
              *s == '_'))
            return false;
    return true;
}
