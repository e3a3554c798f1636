/* kubefn.c: on the Kubernetes backend, the Function objects of the
 * controller's namespace are its specs (an informer), and their status is
 * written back through the status subresource. Thread: the loop's. */
#ifndef CONTROLLER_KUBEFN_H
#define CONTROLLER_KUBEFN_H

#include "controller.h"
#include "stoke/kube.h"

struct kubefn;

struct kubefn_config {
    struct stoke_kube *kube; /* borrowed: closed after kubefn_close() */
    const char *ns;
    const char *url_prefix; /* status.url is this + name + "/"; NULL: no url */
    /* The first LIST is in the cache: kubefn_load() may run. */
    void (*on_synced)(struct ctrl *c);
};

/* Starts the informer. Returns 0 and *ret, or a negative errno. */
int kubefn_new(struct ctrl *c, const struct kubefn_config *cfg, struct kubefn **ret);
/* Applies every Function of the cache (the load step of ctrl_adopt());
 * from then on their changes apply as they come. Returns 0. */
int kubefn_load(struct ctrl *c);
/* Patches the status of each Function whose status changed (each tick). */
void kubefn_write_status(struct kubefn *kf);
/* The uid of Function `name` for its pods' ownerReference, or NULL when
 * there is none (or it is being deleted); `data` is the kubefn. */
const char *kubefn_owner_uid(const char *name, void *data);
/* Its informer's counters and the statuses written again, as metrics. */
int kubefn_metrics(const struct kubefn *kf, struct stoke_buf *out);
void kubefn_close(struct kubefn *kf);

#endif
