/* One YAML document read into a small tree, for the spec parsers inside
 * common/ (spec.c for stoke/v1, knative.c for Knative Services); not public.
 *
 * stoke__yaml_build() turns libyaml's events into one flat array of nodes
 * linked by index, without recursion, and does every YAML-level refusal
 * there, so that both schemas refuse hostile or broken YAML alike and before
 * any field is judged:
 *   - more than STOKE_SPEC_MAX_BYTES of input (-EFBIG);
 *   - text that is not UTF-8 (the input is read as UTF-8 whatever its byte
 *     order mark says; a UTF-8 BOM is skipped), NUL characters in scalars;
 *   - YAML syntax errors, with libyaml's problem and context;
 *   - nesting deeper than STOKE_SPEC_MAX_DEPTH, more than
 *     STOKE_SPEC_MAX_NODES nodes;
 *   - aliases, mapping keys that are not scalars, duplicate keys (the
 *     earliest repeat is named, with where the key first stood);
 *   - tags other than !!str, !!int and "!" on scalars, !!seq on sequences
 *     and !!map on mappings;
 *   - an empty stream, or a second document.
 *
 * Positions are libyaml's marks made 1-based (a reader error's byte offset
 * is counted into a line and a column in characters, as libyaml's scanner
 * counts them). A failure fills `err` with file:line:column, the field path
 * of the node ("spec.env[2]", "" for the document) and the message.
 *
 * The schemas walk the tree themselves. The helpers below name what a node
 * is, read scalar text and check text both schemas take alike (image
 * references, paths, environment variable names), with the same messages for
 * both; values whose messages differ between the two (integers, durations,
 * quantities) stay with their schema. No globals: one tree, one thread. */
#ifndef STOKE_YAMLTREE_H
#define STOKE_YAMLTREE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

#include "stoke/diag.h"

enum stoke__yaml_kind {
    STOKE__YAML_SCALAR,
    STOKE__YAML_SEQ,
    STOKE__YAML_MAP,
};

struct stoke__yaml_node {
    enum stoke__yaml_kind kind;
    unsigned line;   /* 1-based */
    unsigned column; /* 1-based, in characters */
    int parent;      /* index, -1 for the root */
    int key;         /* in a mapping: the key node naming it (a key names itself); else -1 */
    size_t index;    /* a sequence item: its position */
    int first;       /* first child, -1 when none; mappings: key, value, key, ... */
    int last;        /* last child */
    int next;        /* next sibling, -1 for the last */
    size_t nchild;   /* number of children (twice the entries of a mapping) */
    char *text;      /* scalars: owned, NUL-terminated, no NUL inside; NULL otherwise */
    bool plain;      /* a plain scalar without a tag: YAML would resolve its type */
    bool str_tag;    /* quoted, block, or tagged !!str or "!": a string for sure */
};

struct stoke__yaml {
    const char *file;               /* borrowed; only for diags */
    struct stoke_diag *err;         /* borrowed, may be NULL; filled on failure */
    struct stoke__yaml_node *nodes; /* owned; nodes[0] is the document's root */
    size_t len;
    size_t cap;
};

/* Sets up an empty tree; `file` (NULL is "") and `err` (may be NULL) must
 * outlive it. */
void stoke__yaml_init(struct stoke__yaml *y, const char *file, struct stoke_diag *err);

/* Frees the nodes and their text; safe on an initialised tree, built or not,
 * and twice. `file` and `err` stay. */
void stoke__yaml_done(struct stoke__yaml *y);

/* Reads `len` bytes of YAML into `y`, which must be freshly initialised;
 * `buf` may be NULL, read as no bytes (`len` is still held to the cap). Returns 0 with at least the
 * root node, or -EINVAL (any refusal above), -EFBIG (over STOKE_SPEC_MAX_BYTES) or -ENOMEM, with
 * `err` filled. On error `y` may hold part of a tree: free it with stoke__yaml_done(). */
int stoke__yaml_build(struct stoke__yaml *y, const char *buf, size_t len);

/* --- diagnostics ------------------------------------------------------------ */

/* The dotted path of node `i` ("spec.scale.min", "spec.env[2]"), with
 * `.extra` appended when `extra` is not NULL. Always terminated; a long path
 * is cut quietly, as it is only for messages. */
void stoke__yaml_path(const struct stoke__yaml *y, int i, const char *extra, char *buf,
                      size_t size);

/* Fills `err` (when set) and returns `ret_err`, a negative errno. The message
 * is cut to the size of stoke_diag.message before it is cleaned. */
int stoke__yaml_fail_at(struct stoke__yaml *y, unsigned line, unsigned column, const char *field,
                        int ret_err, const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* Fails at node `i`'s position with -EINVAL. `field` names it; NULL is the
 * node's own path (stoke__yaml_path()). */
int stoke__yaml_fail(struct stoke__yaml *y, int i, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* As stoke__yaml_fail() into any diag `d` (a warning, say), returning
 * nothing. */
void stoke__yaml_vdiag(const struct stoke__yaml *y, struct stoke_diag *d, int i, const char *field,
                       const char *fmt, va_list ap) __attribute__((format(printf, 5, 0)));

/* "out of memory" at no position; returns -ENOMEM. */
int stoke__yaml_oom(struct stoke__yaml *y);

/* "the file is larger than STOKE_SPEC_MAX_BYTES bytes"; returns -EFBIG. */
int stoke__yaml_too_big(struct stoke__yaml *y);

/* --- reading the tree ------------------------------------------------------- */

/* A plain scalar YAML reads as null: "", "~", "null", "Null" or "NULL". */
bool stoke__yaml_is_null(const struct stoke__yaml_node *nd);

/* What a node is, for messages: "a mapping", "a sequence", "nothing (null)"
 * or "a scalar". Static strings. */
const char *stoke__yaml_kind_name(const struct stoke__yaml_node *nd);

/* The first key of mapping `m`, -1 when it has none or is not a mapping (a
 * null section); then the key after key `k`, -1 after the last. A key's value
 * is the key's `next`. */
int stoke__yaml_first_key(const struct stoke__yaml *y, int m);
int stoke__yaml_next_key(const struct stoke__yaml *y, int k);

/* Node `i` must be a mapping (or a sequence) or null, an empty section;
 * else "expected a mapping, found ..." at `field` (NULL: its path) and
 * -EINVAL. */
int stoke__yaml_want_map(struct stoke__yaml *y, int i, const char *field);
int stoke__yaml_want_seq(struct stoke__yaml *y, int i, const char *field);

/* Node `i`'s text: a scalar other than null, else "expected <what>, found
 * ..." at `field` (NULL: its path) and -EINVAL. `*ret` is borrowed from the
 * tree; it is untouched on error. */
int stoke__yaml_text(struct stoke__yaml *y, int i, const char *field, const char *what,
                     const char **ret);

/* --- scalar text both schemas check alike ---------------------------------- */

/* Image references and probe paths go into engine API bodies and HTTP
 * request lines: printable ASCII without spaces only. True for "". */
bool stoke__yaml_is_token(const char *s);

/* An environment variable name: [A-Za-z_][A-Za-z0-9_]*. */
bool stoke__yaml_is_env_name(const char *s);

#endif
