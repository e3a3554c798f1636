#include "stoke/json.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>

json_object *stoke_json_parse(const char *s, size_t len)
{
    json_tokener *tok = json_tokener_new_ex(64);
    json_object *obj = NULL;

    if (!tok || len > INT32_MAX)
        goto out;
    obj = json_tokener_parse_ex(tok, s, (int)len);
    if (!obj || json_tokener_get_error(tok) != json_tokener_success)
        goto fail;
    for (size_t i = json_tokener_get_parse_end(tok); i < len; i++) {
        if (!strchr(" \t\r\n", s[i]) || s[i] == '\0')
            goto fail;
    }
    goto out;
fail:
    json_object_put(obj);
    obj = NULL;
out:
    if (tok)
        json_tokener_free(tok);
    return obj;
}

int stoke_json_add(json_object *o, const char *key, json_object *v)
{
    if (!v)
        return -ENOMEM;
    /* json_object_object_add steals v on success only. */
    if (json_object_object_add(o, key, v) < 0) {
        json_object_put(v);
        return -ENOMEM;
    }
    return 0;
}

const char *stoke_json_str(json_object *o, const char *key)
{
    json_object *v = NULL;
    if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
        return NULL;
    return json_object_get_string(v);
}

json_object *stoke_json_obj(json_object *o, const char *key)
{
    json_object *v = NULL;
    if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_object))
        return NULL;
    return v;
}
