/* stokectl's output: JSON and YAML renderings of the API's objects, aligned
 * tables, and the small formatters the commands share. */
#ifndef STOKECTL_OUTPUT_H
#define STOKECTL_OUTPUT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <json-c/json.h>

/* Pretty JSON of `obj`, with a final newline. Returns 0 or -EIO. */
int output_json(json_object *obj, FILE *f);

/* `obj` as one YAML document (libyaml's emitter), keys in the object's
 * order. Strings that would read back as another type ("true", "12",
 * "null", "") are quoted, so the YAML means what the JSON means. Returns 0,
 * -EIO (write failed) or -ENOMEM. */
int output_yaml(json_object *obj, FILE *f);

/* A table: rows of cells printed with each column as wide as its widest
 * cell, two spaces apart, the last column unpadded. Cells are copied. */
struct table {
    size_t ncols;
    size_t nrows;
    char **cells; /* nrows * ncols, owned */
    size_t cap;   /* rows allocated */
};

/* Starts a table whose first row is `header` (ncols strings). */
void table_init(struct table *t, size_t ncols, const char *const *header);
/* Appends a row of t->ncols cells (NULL prints as "-"). Returns 0 or -ENOMEM. */
int table_add(struct table *t, const char *const *row);
void table_print(const struct table *t, FILE *f);
void table_done(struct table *t);

/* Lookups into an object that tolerate a missing member or another type:
 * the member's value, else `def`. Strings are borrowed from `obj`. */
const char *jstr(json_object *obj, const char *key, const char *def);
int64_t jint(json_object *obj, const char *key, int64_t def);
double jdouble(json_object *obj, const char *key, double def);
int jbool(json_object *obj, const char *key, int def);
json_object *jget(json_object *obj, const char *key); /* borrowed or NULL */

/* "1.5Gi", "120Mi", "512Ki", "100B": binary units, up to one decimal. */
void format_bytes(uint64_t bytes, char *buf, size_t size);
/* "2h3m", "1m30s", "12s", "250ms": at most two units. */
void format_ms(uint64_t ms, char *buf, size_t size);

#endif
