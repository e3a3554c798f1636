/* stokectl's output helpers; see output.h. */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <yaml.h>

#include "output.h"

int output_json(json_object *obj, FILE *f)
{
    const char *s = json_object_to_json_string_ext(
        obj, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED | JSON_C_TO_STRING_NOSLASHESCAPE);
    if (fprintf(f, "%s\n", s) < 0)
        return -EIO;
    return 0;
}

/* Whether a plain scalar with this text would read back as something other
 * than a string under YAML 1.1 or 1.2 (null, a boolean, a number, a time);
 * such strings are written quoted. Errs on the side of quoting. */
static bool plain_is_ambiguous(const char *s)
{
    static const char *const words[] = {
        "~",  "null", "y",  "n", "yes",  "no",    "true",  "false",
        "on", "off",  "<<", "=", ".inf", "-.inf", "+.inf", ".nan",
    };
    if (s[0] == '\0')
        return true;
    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++) {
        if (strcasecmp(s, words[i]) == 0)
            return true;
    }
    if (!strchr("0123456789+-.", s[0]))
        return false;
    /* Numbers in any base, with signs, exponents, underscores and
     * sexagesimal colons, and dates and times, use only these. */
    return strspn(s, "0123456789abcdefABCDEFxXoO_:.+- tTzZ") == strlen(s);
}

static int on_yaml_write(void *data, unsigned char *buffer, size_t size)
{
    return fwrite(buffer, 1, size, data) == size;
}

static int emit_scalar(yaml_emitter_t *e, const char *text, bool is_string)
{
    yaml_event_t ev;
    bool quote = is_string && plain_is_ambiguous(text);
    if (!yaml_scalar_event_initialize(
            &ev, NULL, NULL, (yaml_char_t *)text, (int)strlen(text), !quote, 1,
            quote ? YAML_DOUBLE_QUOTED_SCALAR_STYLE : YAML_ANY_SCALAR_STYLE))
        return -ENOMEM;
    return yaml_emitter_emit(e, &ev) ? 0 : -EIO;
}

static int emit_node(yaml_emitter_t *e, json_object *obj, int depth)
{
    yaml_event_t ev;
    char num[64];
    if (depth > 64)
        return -EINVAL;
    switch (json_object_get_type(obj)) {
    case json_type_null:
        return emit_scalar(e, "null", false);
    case json_type_boolean:
        return emit_scalar(e, json_object_get_boolean(obj) ? "true" : "false", false);
    case json_type_int:
        snprintf(num, sizeof(num), "%" PRId64, json_object_get_int64(obj));
        return emit_scalar(e, num, false);
    case json_type_double:
        return emit_scalar(e, json_object_to_json_string_ext(obj, JSON_C_TO_STRING_PLAIN), false);
    case json_type_string:
        return emit_scalar(e, json_object_get_string(obj), true);
    case json_type_object: {
        if (!yaml_mapping_start_event_initialize(&ev, NULL, NULL, 1,
                                                 json_object_object_length(obj) == 0
                                                     ? YAML_FLOW_MAPPING_STYLE
                                                     : YAML_BLOCK_MAPPING_STYLE))
            return -ENOMEM;
        if (!yaml_emitter_emit(e, &ev))
            return -EIO;
        json_object_object_foreach(obj, key, val)
        {
            int r = emit_scalar(e, key, true);
            if (r == 0)
                r = emit_node(e, val, depth + 1);
            if (r < 0)
                return r;
        }
        yaml_mapping_end_event_initialize(&ev);
        return yaml_emitter_emit(e, &ev) ? 0 : -EIO;
    }
    case json_type_array: {
        size_t n = json_object_array_length(obj);
        if (!yaml_sequence_start_event_initialize(
                &ev, NULL, NULL, 1, n == 0 ? YAML_FLOW_SEQUENCE_STYLE : YAML_BLOCK_SEQUENCE_STYLE))
            return -ENOMEM;
        if (!yaml_emitter_emit(e, &ev))
            return -EIO;
        for (size_t i = 0; i < n; i++) {
            int r = emit_node(e, json_object_array_get_idx(obj, i), depth + 1);
            if (r < 0)
                return r;
        }
        yaml_sequence_end_event_initialize(&ev);
        return yaml_emitter_emit(e, &ev) ? 0 : -EIO;
    }
    }
    return -EINVAL;
}

int output_yaml(json_object *obj, FILE *f)
{
    yaml_emitter_t e;
    yaml_event_t ev;
    int r = -EIO;
    if (!yaml_emitter_initialize(&e))
        return -ENOMEM;
    yaml_emitter_set_output(&e, on_yaml_write, f);
    yaml_emitter_set_unicode(&e, 1);
    yaml_emitter_set_indent(&e, 2);
    yaml_emitter_set_width(&e, -1); /* never fold long strings */
    yaml_stream_start_event_initialize(&ev, YAML_UTF8_ENCODING);
    if (!yaml_emitter_emit(&e, &ev))
        goto out;
    yaml_document_start_event_initialize(&ev, NULL, NULL, NULL, 1);
    if (!yaml_emitter_emit(&e, &ev))
        goto out;
    r = emit_node(&e, obj, 0);
    if (r < 0)
        goto out;
    r = -EIO;
    yaml_document_end_event_initialize(&ev, 1);
    if (!yaml_emitter_emit(&e, &ev))
        goto out;
    yaml_stream_end_event_initialize(&ev);
    if (!yaml_emitter_emit(&e, &ev) || !yaml_emitter_flush(&e))
        goto out;
    r = 0;
out:
    yaml_emitter_delete(&e);
    return r;
}

void table_init(struct table *t, size_t ncols, const char *const *header)
{
    memset(t, 0, sizeof(*t));
    t->ncols = ncols;
    (void)table_add(t, header);
}

int table_add(struct table *t, const char *const *row)
{
    if (t->nrows == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 16;
        char **cells = realloc(t->cells, cap * t->ncols * sizeof(*cells));
        if (!cells)
            return -ENOMEM;
        t->cells = cells;
        t->cap = cap;
    }
    char **dst = t->cells + t->nrows * t->ncols;
    for (size_t i = 0; i < t->ncols; i++) {
        dst[i] = strdup(row[i] ? row[i] : "-");
        if (!dst[i]) {
            while (i-- > 0)
                free(dst[i]);
            return -ENOMEM;
        }
    }
    t->nrows++;
    return 0;
}

void table_print(const struct table *t, FILE *f)
{
    size_t width[32] = {0};
    size_t ncols = t->ncols < 32 ? t->ncols : 32;
    for (size_t r = 0; r < t->nrows; r++) {
        for (size_t c = 0; c < ncols; c++) {
            size_t n = strlen(t->cells[r * t->ncols + c]);
            if (n > width[c])
                width[c] = n;
        }
    }
    for (size_t r = 0; r < t->nrows; r++) {
        for (size_t c = 0; c < ncols; c++) {
            const char *cell = t->cells[r * t->ncols + c];
            if (c + 1 == ncols)
                fprintf(f, "%s\n", cell);
            else
                fprintf(f, "%-*s  ", (int)width[c], cell);
        }
    }
}

void table_done(struct table *t)
{
    for (size_t i = 0; i < t->nrows * t->ncols; i++)
        free(t->cells[i]);
    free(t->cells);
    memset(t, 0, sizeof(*t));
}

json_object *jget(json_object *obj, const char *key)
{
    json_object *v = NULL;
    if (!obj || !json_object_is_type(obj, json_type_object) ||
        !json_object_object_get_ex(obj, key, &v))
        return NULL;
    return v;
}

const char *jstr(json_object *obj, const char *key, const char *def)
{
    json_object *v = jget(obj, key);
    return v && json_object_is_type(v, json_type_string) ? json_object_get_string(v) : def;
}

int64_t jint(json_object *obj, const char *key, int64_t def)
{
    json_object *v = jget(obj, key);
    if (v && (json_object_is_type(v, json_type_int) || json_object_is_type(v, json_type_double)))
        return json_object_get_int64(v);
    return def;
}

double jdouble(json_object *obj, const char *key, double def)
{
    json_object *v = jget(obj, key);
    if (v && (json_object_is_type(v, json_type_int) || json_object_is_type(v, json_type_double)))
        return json_object_get_double(v);
    return def;
}

int jbool(json_object *obj, const char *key, int def)
{
    json_object *v = jget(obj, key);
    return v && json_object_is_type(v, json_type_boolean) ? json_object_get_boolean(v) : def;
}

void format_bytes(uint64_t bytes, char *buf, size_t size)
{
    static const char *const units[] = {"Ki", "Mi", "Gi", "Ti", "Pi"};
    if (bytes < 1024) {
        snprintf(buf, size, "%" PRIu64 "B", bytes);
        return;
    }
    double v = (double)bytes / 1024;
    size_t u = 0;
    while (v >= 1024 && u + 1 < sizeof(units) / sizeof(units[0])) {
        v /= 1024;
        u++;
    }
    if (v >= 100 || v == (double)(uint64_t)v)
        snprintf(buf, size, "%.0f%s", v, units[u]);
    else
        snprintf(buf, size, "%.1f%s", v, units[u]);
}

void format_ms(uint64_t ms, char *buf, size_t size)
{
    static const struct {
        uint64_t ms;
        const char *unit;
    } units[] = {{86400000, "d"}, {3600000, "h"}, {60000, "m"}, {1000, "s"}, {1, "ms"}};
    if (ms == 0) {
        snprintf(buf, size, "0s");
        return;
    }
    size_t len = 0, shown = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]) && shown < 2; i++) {
        uint64_t n = ms / units[i].ms;
        if (n == 0) {
            if (shown > 0)
                break; /* "1h" then no minutes: stop, not "1h0m..." */
            continue;
        }
        ms -= n * units[i].ms;
        int w = snprintf(buf + len, size - len, "%" PRIu64 "%s", n, units[i].unit);
        if (w < 0 || (size_t)w >= size - len)
            break;
        len += (size_t)w;
        shown++;
    }
}
