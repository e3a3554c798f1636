/* Knative serving.knative.dev/v1 Service manifests read as stoke function
 * specs (DESIGN.md, "Function spec"; the mapping table is in the README,
 * "Knative manifests").
 *
 * The same YAML refusals and caps as stoke/v1 (STOKE_SPEC_MAX_*: size,
 * depth, nodes, aliases, tags, duplicate keys, UTF-8, one document), the
 * same bounds on every value, and the same all-or-nothing result. What
 * differs: fields stoke does not support are warnings, not errors, and the
 * caller gets them through a callback. stoke_spec_parse() and
 * stoke_spec_load() route Knative manifests here on their own; call this
 * directly only to insist on a Knative manifest. Pure: no I/O. */
#ifndef STOKE_KNATIVE_H
#define STOKE_KNATIVE_H

#include <stdbool.h>
#include <stddef.h>

#include "stoke/diag.h"
#include "stoke/spec.h"

/* Warnings kept per manifest; past this, one last warning says how many
 * more there were, so a manifest cannot make the parser allocate without
 * bound. */
#define STOKE_KNATIVE_MAX_WARNINGS 64

/* Whether `buf` is a YAML document whose top-level mapping says
 * `apiVersion: serving.knative.dev/v1` and `kind: Service`. Reads only as far
 * as it needs to; false for anything it cannot read (oversized, broken or
 * hostile YAML), which the stoke/v1 parser then refuses with its own
 * message. */
bool stoke_knative_is_service(const char *buf, size_t len);

/* Parses a Knative Service manifest into `ret` (free with stoke_spec_done()).
 * Returns 0, -EINVAL (bad manifest, or not a Knative Service), -EFBIG (over
 * STOKE_SPEC_MAX_BYTES) or -ENOMEM. On error `ret` is zeroed, `reterr` (may
 * be NULL) says file:line:column, field and what, and `warn` is not called.
 * On success `warn` (may be NULL) gets each warning in file order: the field
 * path (e.g. "spec.traffic") and "not supported by stoke, ignored", or why a
 * value was adjusted. */
int stoke_knative_parse(const char *buf, size_t len, const char *filename, struct stoke_spec *ret,
                        struct stoke_diag *reterr, stoke_spec_warn_fn warn, void *data);

#endif
