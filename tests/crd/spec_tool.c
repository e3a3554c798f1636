/* What the spec parser knows and says, as JSON, for tests/crd/test_crd_*.py
 * to hold the Function CRD's schema (charts/stoke/files) against it.
 *
 * spec_tool fields          the field tree (stoke_spec_fields()), one JSON array
 * spec_tool check FILE...   one JSON object a line per file: its verdict
 *                           {"file", "ok", and when refused "field", "error"} */
#include <stdio.h>
#include <string.h>

#include <json-c/json.h>

#include "stoke/spec.h"

static const char *const type_names[] = {
    [STOKE_SPEC_STRING] = "string", [STOKE_SPEC_NAME] = "name",
    [STOKE_SPEC_IMAGE] = "image",   [STOKE_SPEC_PATH] = "path",
    [STOKE_SPEC_UINT] = "uint",     [STOKE_SPEC_DURATION] = "duration",
    [STOKE_SPEC_MEMORY] = "memory", [STOKE_SPEC_CPU] = "cpu",
    [STOKE_SPEC_BOOL] = "bool",     [STOKE_SPEC_MAP] = "map",
    [STOKE_SPEC_ENV] = "env",       [STOKE_SPEC_STRMAP] = "strmap",
    [STOKE_SPEC_LIST] = "list",     [STOKE_SPEC_ADDRESS] = "address",
    [STOKE_SPEC_CRON] = "cron",     [STOKE_SPEC_ZONE] = "zone",
    [STOKE_SPEC_TEXT] = "text",
};

static void add_field(const struct stoke_spec_field_info *f, void *data)
{
    json_object *o = json_object_new_object();
    json_object *values = json_object_new_array();

    json_object_object_add(o, "path", json_object_new_string(f->path));
    json_object_object_add(o, "type", json_object_new_string(type_names[f->type]));
    /* Bounds up to UINT64_MAX: Python's json reads them exactly. */
    json_object_object_add(o, "min", json_object_new_uint64(f->min));
    json_object_object_add(o, "max", json_object_new_uint64(f->max));
    json_object_object_add(o, "required", json_object_new_boolean(f->required));
    for (size_t k = 0; f->values && f->values[k]; k++)
        json_object_array_add(values, json_object_new_string(f->values[k]));
    json_object_object_add(o, "values", values);
    json_object_array_add(data, o);
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "fields") == 0) {
        json_object *a = json_object_new_array();
        stoke_spec_fields(add_field, a);
        puts(json_object_to_json_string_ext(a, JSON_C_TO_STRING_PRETTY));
        json_object_put(a);
        return 0;
    }
    if (argc >= 2 && strcmp(argv[1], "check") == 0) {
        for (int i = 2; i < argc; i++) {
            struct stoke_spec spec;
            struct stoke_diag err;
            json_object *o = json_object_new_object();
            int r = stoke_spec_load(argv[i], &spec, &err);

            json_object_object_add(o, "file", json_object_new_string(argv[i]));
            json_object_object_add(o, "ok", json_object_new_boolean(r == 0));
            if (r < 0) {
                json_object_object_add(o, "field", json_object_new_string(err.field));
                json_object_object_add(o, "error", json_object_new_string(err.message));
            }
            puts(json_object_to_json_string(o));
            json_object_put(o);
            stoke_spec_done(&spec);
        }
        return 0;
    }
    fprintf(stderr, "usage: spec_tool fields | spec_tool check FILE...\n");
    return 2;
}
