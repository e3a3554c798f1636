/* Changes to the functions directory made through the admin API (fnset.c;
 * fnset_new() and the directory watch are declared in controller.h).
 *
 * A PUT or DELETE is an operation queued on the fnset and run one at a time
 * in arrival order: the file work (parse, write, fsync, rename, fsync of the
 * directory, or unlink) runs on libuv's thread pool, never on the loop; only
 * once the file is in place does the spec take effect. While an operation
 * runs the fnset's own rescans wait, and it records the file it wrote, so
 * the directory watch does not apply the same change a second time.
 * Thread: the loop's (callbacks too). */
#ifndef CONTROLLER_FNSET_H
#define CONTROLLER_FNSET_H

#include <stdbool.h>
#include <stddef.h>

#include "controller.h"
#include "stoke/diag.h"

struct fnset_op;

struct fnset_put_result {
    /* 0; -EINVAL: the body is not a valid spec, or its metadata.name is not
     * the name asked for (diag says where); -EEXIST: the file the function
     * would be written to defines another function (diag.message says
     * which); -ECANCELED: the fnset closed first; another negative errno: the
     * file could not be written (nothing changed; diag.message says what). */
    int err;
    const struct stoke_diag *diag; /* borrowed for the callback; with err < 0 */
    bool created;                  /* the function did not exist before */
    bool changed;                  /* the spec in effect differs from before */
    const char *file;              /* the file written (name in the directory) */
    /* Warnings of an accepted Knative manifest, "body:LINE:COLUMN: FIELD:
     * message" each; borrowed for the callback. */
    const char *const *warnings;
    size_t n_warnings;
};

typedef void (*fnset_put_cb)(const struct fnset_put_result *res, void *data);

/* Queues a PUT of function `name` with `body` (YAML or JSON, a stoke/v1
 * Function or a Knative Service; copied). `cb` runs once, later, from the
 * loop (never from inside this call). Returns 0 and *ret (valid until the
 * callback, or until fnset_op_forget()), or -ENOMEM / -EFBIG (body over
 * STOKE_SPEC_MAX_BYTES) / -ECANCELED (closing), and cb never runs. */
int fnset_put(struct fnset *fs, const char *name, const char *body, size_t len, fnset_put_cb cb,
              void *data, struct fnset_op **ret);

/* err: 0 (the file is gone and the function is being removed), -ENOENT (no
 * such function), -ECANCELED, or the unlink's negative errno (nothing
 * changed). */
typedef void (*fnset_delete_cb)(int err, void *data);

/* Queues a DELETE of function `name`; as fnset_put(). */
int fnset_delete(struct fnset *fs, const char *name, fnset_delete_cb cb, void *data,
                 struct fnset_op **ret);

/* The caller no longer wants the answer (its client went away): the callback
 * will not run; the operation itself still completes, in its turn. */
void fnset_op_forget(struct fnset_op *op);

#endif
