/* json-c helpers shared by the HTTP API clients (engine.c, kube*.c). */
#ifndef STOKE_JSON_H
#define STOKE_JSON_H

#include <stddef.h>

#include <json-c/json.h>

/* Parses the whole of `s` as one JSON value (trailing whitespace allowed:
 * APIs end bodies with a newline), nested at most 64 deep. Returns an owned
 * object (put it), or NULL when it is not JSON. */
json_object *stoke_json_parse(const char *s, size_t len);

/* Adds `v` to object `o` under `key`, taking ownership of `v` either way.
 * Returns 0 or -ENOMEM (also when v is NULL, from a failed
 * json_object_new_*()). */
int stoke_json_add(json_object *o, const char *key, json_object *v);

/* The member `key` of `o` when it is a string (an object), else NULL;
 * `o` may be NULL or not an object. Borrowed from `o`. */
const char *stoke_json_str(json_object *o, const char *key);
json_object *stoke_json_obj(json_object *o, const char *key);

#endif
