/* The functions directory: every *.yaml / *.yml file in it is one function
 * spec. Changes are noticed through inotify (uv_fs_event), which names the
 * file: only that one is read again; as a fallback for events that get
 * lost, a periodic rescan of the whole directory (every 30 s while inotify
 * watches, 2 s while not); a file is re-read only when its inode, size or
 * mtime changed. The admin API writes and
 * removes files through the queued operations of fnset.h. */
#include "fnset.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "controller.h"
#include "stoke/list.h"
#include "stoke/log.h"

#define DEBOUNCE_MS 50
#define RESCAN_MS 2000
/* While inotify watches, it names each file that changed and only those
 * are read again; the whole directory is rescanned this rarely. */
#define RESCAN_WATCHED_MS 30000
#define MAX_FILES 10000
/* Files named by events within one debounce; past it, a full rescan. */
#define MAX_PENDING 64

struct fnfile {
    char name[NAME_MAX + 1];
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
    char fn[STOKE_NAME_MAX + 1]; /* the function this file defines, or "" */
    bool seen;
};

struct fnset {
    struct ctrl *c;
    char dir[PATH_MAX];
    uv_fs_event_t watch;
    bool watching;
    uv_timer_t debounce;
    uv_timer_t rescan;
    struct fnfile *files;
    size_t n_files;
    bool dir_missing_logged;
    int handles; /* open handles, plus one while an operation's work runs */
    bool closing;
    struct stoke_list ops;    /* struct fnset_op.node, queued in arrival order */
    struct fnset_op *running; /* the head, its file work on the thread pool */
    bool rescan_wanted;       /* a rescan came while an operation ran */
    uint64_t last_full_ms;    /* the last fnset_rescan() */
    /* The files inotify named since the debounce began; a full rescan if
     * it named none (overflow) or too many. */
    char pending[MAX_PENDING][NAME_MAX + 1];
    size_t n_pending;
    bool pending_all;
};

static bool has_spec_suffix(const char *name)
{
    size_t n = strlen(name);
    if (name[0] == '.')
        return false; /* editors' swap and temp files */
    return (n > 5 && strcmp(name + n - 5, ".yaml") == 0) ||
           (n > 4 && strcmp(name + n - 4, ".yml") == 0);
}

static struct fnfile *file_find(struct fnset *fs, const char *name)
{
    for (size_t i = 0; i < fs->n_files; i++) {
        if (strcmp(fs->files[i].name, name) == 0)
            return &fs->files[i];
    }
    return NULL;
}

/* The file (other than `self`) that defines function `fn`, if any. */
static struct fnfile *owner_of(struct fnset *fs, const char *fn, const struct fnfile *self)
{
    for (size_t i = 0; i < fs->n_files; i++) {
        if (&fs->files[i] != self && strcmp(fs->files[i].fn, fn) == 0)
            return &fs->files[i];
    }
    return NULL;
}

static bool unchanged(const struct fnfile *f, const struct stat *st)
{
    return f->dev == st->st_dev && f->ino == st->st_ino && f->size == st->st_size &&
           f->mtime.tv_sec == st->st_mtim.tv_sec && f->mtime.tv_nsec == st->st_mtim.tv_nsec;
}

/* A field of a Knative manifest stoke does not support: logged, never
 * silently dropped. */
static void on_spec_warning(const struct stoke_diag *w, void *data)
{
    char msg[768];
    (void)data;
    stoke_diag_format(w, msg, sizeof(msg));
    stoke_warn(NULL, 0, "spec: %s", msg);
}

static void load_file(struct fnset *fs, struct fnfile *f, const char *path)
{
    struct stoke_spec spec;
    struct stoke_diag d;
    char msg[768];
    int r = stoke_spec_load_ex(path, &spec, &d, on_spec_warning, NULL);
    if (r < 0) {
        stoke_diag_format(&d, msg, sizeof(msg));
        if (f->fn[0])
            stoke_error(f->fn, r, "spec refused, function keeps its current spec: %s", msg);
        else
            stoke_error(NULL, r, "spec refused: %s", msg);
        return;
    }
    struct fnfile *other = owner_of(fs, spec.name, f);
    if (other) {
        stoke_error(spec.name, -EEXIST, "spec refused: %s: function %s is already defined by %s",
                    path, spec.name, other->name);
        stoke_spec_done(&spec);
        return;
    }
    if (f->fn[0] && strcmp(f->fn, spec.name) != 0) {
        /* The file now names another function: the old one goes away. */
        ctrl_function_delete(fs->c, f->fn);
        f->fn[0] = '\0';
    }
    r = ctrl_function_apply(fs->c, &spec);
    if (r < 0)
        stoke_error(spec.name, r, "cannot apply %s", path);
    else
        snprintf(f->fn, sizeof(f->fn), "%s", spec.name);
    stoke_spec_done(&spec);
}

static void ops_next(struct fnset *fs);

/* A new entry for file `name`, all else zero; NULL when out of memory. */
static struct fnfile *file_add(struct fnset *fs, const char *name)
{
    struct fnfile *n = realloc(fs->files, (fs->n_files + 1) * sizeof(*n));
    if (!n)
        return NULL;
    fs->files = n;
    struct fnfile *f = &fs->files[fs->n_files++];
    memset(f, 0, sizeof(*f));
    snprintf(f->name, sizeof(f->name), "%s", name);
    return f;
}

/* Reads file `name` of the directory again if it changed, as a rescan
 * does. Returns its entry, or NULL when it is no (readable, regular) spec
 * file now or there is no room. */
static struct fnfile *consider(struct fnset *fs, const char *name)
{
    char path[PATH_MAX];
    struct stat st;
    if (snprintf(path, sizeof(path), "%s/%s", fs->dir, name) >= (int)sizeof(path) ||
        stat(path, &st) < 0 || !S_ISREG(st.st_mode))
        return NULL;
    struct fnfile *f = file_find(fs, name);
    if (!f) {
        f = fs->n_files < MAX_FILES ? file_add(fs, name) : NULL;
        if (!f)
            return NULL;
    } else if (unchanged(f, &st)) {
        return f;
    }
    f->dev = st.st_dev;
    f->ino = st.st_ino;
    f->size = st.st_size;
    f->mtime = st.st_mtim;
    load_file(fs, f, path);
    return f;
}

/* Forgets entry `f` (its file is gone), and its function unless another
 * file defines it. */
static void file_drop(struct fnset *fs, struct fnfile *f)
{
    char fn[sizeof(f->fn)];
    memcpy(fn, f->fn, sizeof(fn));
    *f = fs->files[--fs->n_files];
    if (fn[0] && !owner_of(fs, fn, NULL))
        ctrl_function_delete(fs->c, fn);
}

void fnset_rescan(struct fnset *fs)
{
    if (fs->running) {
        /* The file being written is recorded when the operation ends; a
         * rescan now could apply it first, or half-way. */
        fs->rescan_wanted = true;
        return;
    }
    DIR *d = opendir(fs->dir);
    if (!d) {
        if (!fs->dir_missing_logged)
            stoke_error(NULL, -errno, "cannot read the functions directory %s", fs->dir);
        fs->dir_missing_logged = true;
        return;
    }
    fs->dir_missing_logged = false;
    fs->last_full_ms = uv_now(fs->c->loop);
    for (size_t i = 0; i < fs->n_files; i++)
        fs->files[i].seen = false;

    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!has_spec_suffix(de->d_name))
            continue;
        struct fnfile *f = consider(fs, de->d_name);
        if (f)
            f->seen = true;
    }
    closedir(d);

    for (size_t i = 0; i < fs->n_files;) {
        struct fnfile *f = &fs->files[i];
        if (f->seen)
            i++;
        else
            file_drop(fs, f);
    }
}

/* The files inotify named, each read again (or forgotten, when gone): the
 * cost of a change does not grow with the number of functions. */
static void on_debounce(uv_timer_t *t)
{
    struct fnset *fs = t->data;
    bool all = fs->pending_all || fs->running;
    size_t n = fs->n_pending;
    fs->pending_all = false;
    fs->n_pending = 0;
    if (all) {
        fnset_rescan(fs);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        const char *name = fs->pending[i];
        struct fnfile *f = consider(fs, name);
        struct fnfile *old = f ? NULL : file_find(fs, name);
        if (old)
            file_drop(fs, old);
    }
}

static void on_dir_event(uv_fs_event_t *h, const char *filename, int events, int status)
{
    struct fnset *fs = h->data;
    (void)events;
    if (status < 0 || !filename) {
        fs->pending_all = true; /* the queue overflowed, or no name */
    } else if (has_spec_suffix(filename)) {
        size_t i = 0;
        while (i < fs->n_pending && strcmp(fs->pending[i], filename) != 0)
            i++;
        if (i == fs->n_pending) {
            if (fs->n_pending < MAX_PENDING)
                snprintf(fs->pending[fs->n_pending++], NAME_MAX + 1, "%s", filename);
            else
                fs->pending_all = true;
        }
    } else if (filename[0] == '.') {
        return; /* a temp file beside one being written: no spec changed */
    } else {
        fs->pending_all = true; /* another file, or the directory itself */
    }
    /* Editors write in several steps; read once they are done. */
    uv_timer_start(&fs->debounce, on_debounce, DEBOUNCE_MS, 0);
}

static void on_rescan(uv_timer_t *t)
{
    struct fnset *fs = t->data;
    if (!fs->watching) {
        fs->watching = uv_fs_event_start(&fs->watch, on_dir_event, fs->dir, 0) == 0;
    }
    if (!fs->watching || uv_now(fs->c->loop) - fs->last_full_ms >= RESCAN_WATCHED_MS)
        fnset_rescan(fs);
}

int fnset_new(struct ctrl *c, const char *dir, struct fnset **ret)
{
    struct fnset *fs = calloc(1, sizeof(*fs));
    if (!fs)
        return -ENOMEM;
    fs->c = c;
    if (snprintf(fs->dir, sizeof(fs->dir), "%s", dir) >= (int)sizeof(fs->dir)) {
        free(fs);
        return -ENAMETOOLONG;
    }
    if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
        int e = -errno;
        free(fs);
        return e;
    }
    uv_fs_event_init(c->loop, &fs->watch);
    uv_timer_init(c->loop, &fs->debounce);
    uv_timer_init(c->loop, &fs->rescan);
    fs->watch.data = fs;
    fs->debounce.data = fs;
    fs->rescan.data = fs;
    fs->handles = 3;
    stoke_list_init(&fs->ops);
    fs->watching = uv_fs_event_start(&fs->watch, on_dir_event, fs->dir, 0) == 0;
    uv_timer_start(&fs->rescan, on_rescan, RESCAN_MS, RESCAN_MS);
    fnset_rescan(fs);
    *ret = fs;
    return 0;
}

/* ---- operations of the admin API ---------------------------------------- */

#define MAX_WARNINGS 64

enum op_kind { OP_PUT, OP_DELETE };

struct fnset_op {
    struct stoke_list node; /* fs->ops */
    struct fnset *fs;
    enum op_kind kind;
    uv_work_t work;
    char name[STOKE_NAME_MAX + 1];
    char file[NAME_MAX + 1]; /* the file to write or remove; "" for none */
    char dir[PATH_MAX];      /* copied: the worker reads no fnset state */
    bool conflict;           /* PUT: `file` defines another function */
    char *body;              /* PUT: owned */
    size_t len;
    fnset_put_cb put_cb;
    fnset_delete_cb delete_cb;
    void *data;
    bool forgotten;
    /* Results, written by the worker and read on the loop after it. */
    int err;
    struct stoke_diag diag;
    struct stoke_spec spec;
    char *warnings[MAX_WARNINGS];
    size_t n_warnings;
    struct stat st; /* the file written */
};

static void op_free(struct fnset_op *op)
{
    stoke_spec_done(&op->spec);
    for (size_t i = 0; i < op->n_warnings; i++)
        free(op->warnings[i]);
    free(op->body);
    free(op);
}

/* Worker thread. */
static void on_put_warning(const struct stoke_diag *w, void *data)
{
    struct fnset_op *op = data;
    char msg[768];
    if (op->n_warnings >= MAX_WARNINGS)
        return;
    stoke_diag_format(w, msg, sizeof(msg));
    op->warnings[op->n_warnings] = strdup(msg);
    if (op->warnings[op->n_warnings])
        op->n_warnings++;
}

/* Worker thread: fsyncs directory `dir`. Returns 0 or -errno. */
static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int r = fsync(fd) < 0 ? -errno : 0;
    (void)close(fd);
    return r;
}

/* Worker thread: writes op->body to op->file through a dot-file beside it,
 * fsync, rename, fsync of the directory. Returns 0 or -errno, the file
 * untouched then. */
static int write_atomic(struct fnset_op *op)
{
    char path[PATH_MAX], tmp[PATH_MAX];
    int fd = -1;
    int r;

    if (snprintf(path, sizeof(path), "%s/%s", op->dir, op->file) >= (int)sizeof(path) ||
        snprintf(tmp, sizeof(tmp), "%s/.%s.api-tmp", op->dir, op->file) >= (int)sizeof(tmp))
        return -ENAMETOOLONG;
    /* A temp file left by a crash in the middle of a write is reused. Mode
     * 0600 (fchmod too: a reused file keeps its mode): a spec's env may hold
     * secrets, and only the controller reads the directory. */
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return -errno;
    if (fchmod(fd, 0600) < 0) {
        r = -errno;
        goto fail;
    }
    for (size_t off = 0; off < op->len;) {
        ssize_t n = write(fd, op->body + off, op->len - off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            r = -errno;
            goto fail;
        }
        off += (size_t)n;
    }
    if (fsync(fd) < 0 || fstat(fd, &op->st) < 0) {
        r = -errno;
        goto fail;
    }
    if (close(fd) < 0) {
        fd = -1;
        r = -errno;
        goto fail;
    }
    fd = -1;
    if (rename(tmp, path) < 0) {
        r = -errno;
        goto fail;
    }
    /* Renamed: the new spec is what a restart reads, once the directory's
     * entry is on disk too. A failure here leaves the file in place. */
    (void)fsync_dir(op->dir);
    return 0;
fail:
    if (fd >= 0)
        (void)close(fd);
    (void)unlink(tmp);
    return r;
}

static void op_work(uv_work_t *w)
{
    struct fnset_op *op = w->data;
    char path[PATH_MAX];

    if (op->kind == OP_DELETE) {
        if (!op->file[0])
            return;
        if (snprintf(path, sizeof(path), "%s/%s", op->dir, op->file) >= (int)sizeof(path)) {
            op->err = -ENAMETOOLONG;
            return;
        }
        if (unlink(path) < 0 && errno != ENOENT) {
            op->err = -errno;
            /* uv_strerror: static strings, fine on a worker thread. */
            stoke_diag_set(&op->diag, op->file, 0, 0, "", "cannot remove %s: %s", op->file,
                           uv_strerror(op->err));
            return;
        }
        (void)fsync_dir(op->dir);
        return;
    }

    op->err =
        stoke_spec_parse_ex(op->body, op->len, "body", &op->spec, &op->diag, on_put_warning, op);
    if (op->err < 0)
        return;
    if (strcmp(op->spec.name, op->name) != 0) {
        op->err = -EINVAL;
        stoke_diag_set(&op->diag, "body", 0, 0, "metadata.name", "is \"%s\", the URL names \"%s\"",
                       op->spec.name, op->name);
        return;
    }
    if (op->conflict) {
        op->err = -EEXIST;
        stoke_diag_set(&op->diag, op->file, 0, 0, "metadata.name", "%s defines another function",
                       op->file);
        return;
    }
    op->err = write_atomic(op);
    if (op->err < 0)
        stoke_diag_set(&op->diag, op->file, 0, 0, "", "cannot write %s/%s: %s", op->dir, op->file,
                       uv_strerror(op->err));
}

/* The fields that shape what a function does, beyond its revision. */
static bool spec_same(const struct function *fn, const struct stoke_spec *s)
{
    const struct stoke_spec *a = &fn->spec;
    const struct stoke_scale *x = &a->scale, *y = &s->scale;
    char rev[17];
    stoke_spec_revision(s, rev);
    return strcmp(rev, fn->revision) == 0 && x->min == y->min && x->max == y->max &&
           x->initial == y->initial && x->target == y->target && x->utilization == y->utilization &&
           x->container_concurrency == y->container_concurrency && x->window_ms == y->window_ms &&
           x->panic_window_percent == y->panic_window_percent &&
           x->panic_threshold_percent == y->panic_threshold_percent &&
           x->scale_to_zero_grace_ms == y->scale_to_zero_grace_ms &&
           x->scale_down_delay_ms == y->scale_down_delay_ms && x->idle == y->idle &&
           x->stop_after_ms == y->stop_after_ms && x->remove_after_ms == y->remove_after_ms &&
           x->precreated == y->precreated && a->timeout_ms == s->timeout_ms &&
           a->queue.max == s->queue.max && a->queue.timeout_ms == s->queue.timeout_ms &&
           a->readiness.period_ms == s->readiness.period_ms;
}

/* Loop: the file `name` now holds function `fn` as `st` says, so that the
 * next rescan sees no change. Returns the entry or NULL (OOM: the rescan
 * will then read the file once more, harmlessly). */
static struct fnfile *file_record(struct fnset *fs, const char *name, const char *fn,
                                  const struct stat *st)
{
    struct fnfile *f = file_find(fs, name);
    if (!f)
        f = file_add(fs, name);
    if (!f)
        return NULL;
    f->dev = st->st_dev;
    f->ino = st->st_ino;
    f->size = st->st_size;
    f->mtime = st->st_mtim;
    f->seen = true;
    snprintf(f->fn, sizeof(f->fn), "%s", fn);
    return f;
}

static void put_done(struct fnset *fs, struct fnset_op *op, int status)
{
    struct fnset_put_result res = {.err = op->err, .diag = &op->diag, .file = op->file};
    if (status < 0 && res.err == 0)
        res.err = status;
    if (res.err == 0 && fs->closing)
        res.err = -ECANCELED;
    if (res.err == 0) {
        struct function *fn = ctrl_function_find(fs->c, op->name);
        res.created = !fn || fn->deleted;
        res.changed = res.created || !spec_same(fn, &op->spec);
        (void)file_record(fs, op->file, op->name, &op->st);
        int r = ctrl_function_apply(fs->c, &op->spec);
        if (r < 0) {
            /* The file is written: the next start applies it. */
            stoke_error(op->name, r, "cannot apply the spec written to %s", op->file);
            stoke_diag_set(&op->diag, op->file, 0, 0, "", "written, but not applied: %s",
                           strerror(-r));
            res.err = r;
        } else {
            stoke_info(op->name, "spec %s through the admin API (%s)",
                       res.created   ? "created"
                       : res.changed ? "changed"
                                     : "rewritten",
                       op->file);
        }
    }
    res.warnings = (const char *const *)op->warnings;
    res.n_warnings = op->n_warnings;
    if (!op->forgotten)
        op->put_cb(&res, op->data);
}

static void delete_done(struct fnset *fs, struct fnset_op *op, int status)
{
    int err = op->err < 0 ? op->err : status;
    if (err == 0 && fs->closing)
        err = -ECANCELED;
    if (err == 0) {
        struct fnfile *f = op->file[0] ? file_find(fs, op->file) : NULL;
        if (f)
            *f = fs->files[--fs->n_files];
        struct function *fn = ctrl_function_find(fs->c, op->name);
        if (!op->file[0] && (!fn || fn->deleted)) {
            err = -ENOENT;
        } else if (!owner_of(fs, op->name, NULL)) {
            stoke_info(op->name, "spec removed through the admin API (%s)",
                       op->file[0] ? op->file : "no file");
            ctrl_function_delete(fs->c, op->name);
        }
    } else if (err < 0 && err != -ECANCELED) {
        stoke_error(op->name, err, "cannot remove %s", op->file);
    }
    if (!op->forgotten)
        op->delete_cb(err, op->data);
}

/* Off the queue, answered (unless forgotten) and freed. */
static void op_finish(struct fnset *fs, struct fnset_op *op, int status)
{
    stoke_list_remove(&op->node);
    if (op->kind == OP_PUT)
        put_done(fs, op, status);
    else
        delete_done(fs, op, status);
    op_free(op);
}

static void fs_unref(struct fnset *fs);

static void op_after(uv_work_t *w, int status)
{
    struct fnset_op *op = w->data;
    struct fnset *fs = op->fs;

    fs->running = NULL;
    op_finish(fs, op, status);
    if (fs->closing) {
        fs_unref(fs); /* the reference the work held: may be the last */
        return;
    }
    fs_unref(fs); /* the handles still hold it */
    ops_next(fs);
    if (!fs->running && fs->rescan_wanted) {
        fs->rescan_wanted = false;
        fnset_rescan(fs);
    }
}

/* Starts the operation at the head of the queue, if none runs. */
static void ops_next(struct fnset *fs)
{
    while (!fs->running && !stoke_list_empty(&fs->ops)) {
        struct fnset_op *op = stoke_container_of(stoke_list_first(&fs->ops), struct fnset_op, node);
        /* Which file, decided now: the operations before may have moved it. */
        struct fnfile *f = owner_of(fs, op->name, NULL);
        if (f) {
            snprintf(op->file, sizeof(op->file), "%s", f->name);
        } else if (op->kind == OP_PUT) {
            snprintf(op->file, sizeof(op->file), "%s.yaml", op->name);
            f = file_find(fs, op->file);
            op->conflict = f && f->fn[0] && strcmp(f->fn, op->name) != 0;
        }
        snprintf(op->dir, sizeof(op->dir), "%s", fs->dir);
        op->work.data = op;
        int r = uv_queue_work(fs->c->loop, &op->work, op_work, op_after);
        if (r == 0) {
            fs->running = op;
            fs->handles++;
            return;
        }
        /* Cannot happen with a valid loop and callbacks; answered, not lost. */
        op->err = r;
        stoke_diag_set(&op->diag, "", 0, 0, "", "cannot queue the file work: %s", uv_strerror(r));
        op_finish(fs, op, r);
    }
}

static int op_queue(struct fnset *fs, enum op_kind kind, const char *name, void *data,
                    struct fnset_op **ret)
{
    if (fs->closing)
        return -ECANCELED;
    if (strlen(name) > STOKE_NAME_MAX)
        return -EINVAL;
    struct fnset_op *op = calloc(1, sizeof(*op));
    if (!op)
        return -ENOMEM;
    op->fs = fs;
    op->kind = kind;
    op->data = data;
    snprintf(op->name, sizeof(op->name), "%s", name);
    stoke_list_insert_tail(&fs->ops, &op->node);
    *ret = op;
    return 0;
}

/* Starts the queue from the loop, so that a callback never runs from inside
 * fnset_put() or fnset_delete(): uv_queue_work() never calls back at once. */
int fnset_put(struct fnset *fs, const char *name, const char *body, size_t len, fnset_put_cb cb,
              void *data, struct fnset_op **ret)
{
    if (len > STOKE_SPEC_MAX_BYTES)
        return -EFBIG;
    char *copy = malloc(len + 1);
    if (!copy)
        return -ENOMEM;
    memcpy(copy, body, len);
    copy[len] = '\0';
    struct fnset_op *op;
    int r = op_queue(fs, OP_PUT, name, data, &op);
    if (r < 0) {
        free(copy);
        return r;
    }
    op->body = copy;
    op->len = len;
    op->put_cb = cb;
    *ret = op;
    ops_next(fs);
    return 0;
}

int fnset_delete(struct fnset *fs, const char *name, fnset_delete_cb cb, void *data,
                 struct fnset_op **ret)
{
    struct fnset_op *op;
    int r = op_queue(fs, OP_DELETE, name, data, &op);
    if (r < 0)
        return r;
    op->delete_cb = cb;
    *ret = op;
    ops_next(fs);
    return 0;
}

void fnset_op_forget(struct fnset_op *op)
{
    op->forgotten = true;
}

static void fs_unref(struct fnset *fs)
{
    if (--fs->handles > 0)
        return;
    free(fs->files);
    free(fs);
}

static void on_closed(uv_handle_t *h)
{
    fs_unref(h->data);
}

void fnset_close(struct fnset *fs)
{
    fs->closing = true;
    /* Queued operations that have not started never will; the one running
     * ends in op_after(), which holds the last reference then. */
    for (struct stoke_list *n = fs->ops.next; n != &fs->ops;) {
        struct fnset_op *op = stoke_container_of(n, struct fnset_op, node);
        n = n->next;
        if (op == fs->running)
            continue;
        op->err = -ECANCELED;
        op_finish(fs, op, 0);
    }
    uv_close((uv_handle_t *)&fs->watch, on_closed);
    uv_close((uv_handle_t *)&fs->debounce, on_closed);
    uv_close((uv_handle_t *)&fs->rescan, on_closed);
}
