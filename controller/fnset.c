/* The functions directory: every *.yaml / *.yml file in it is one function
 * spec. Changes are noticed through inotify (uv_fs_event) and, as a
 * fallback for events that get lost, a periodic rescan; a file is re-read
 * only when its inode, size or mtime changed. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "controller.h"
#include "stoke/log.h"

#define DEBOUNCE_MS 50
#define RESCAN_MS 2000
#define MAX_FILES 10000

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
    int handles;
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

void fnset_rescan(struct fnset *fs)
{
    DIR *d = opendir(fs->dir);
    if (!d) {
        if (!fs->dir_missing_logged)
            stoke_error(NULL, -errno, "cannot read the functions directory %s", fs->dir);
        fs->dir_missing_logged = true;
        return;
    }
    fs->dir_missing_logged = false;
    for (size_t i = 0; i < fs->n_files; i++)
        fs->files[i].seen = false;

    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!has_spec_suffix(de->d_name))
            continue;
        char path[PATH_MAX];
        struct stat st;
        if (snprintf(path, sizeof(path), "%s/%s", fs->dir, de->d_name) >= (int)sizeof(path) ||
            stat(path, &st) < 0 || !S_ISREG(st.st_mode))
            continue;
        struct fnfile *f = file_find(fs, de->d_name);
        if (!f) {
            if (fs->n_files >= MAX_FILES)
                continue;
            struct fnfile *n = realloc(fs->files, (fs->n_files + 1) * sizeof(*n));
            if (!n)
                continue;
            fs->files = n;
            f = &fs->files[fs->n_files++];
            memset(f, 0, sizeof(*f));
            snprintf(f->name, sizeof(f->name), "%s", de->d_name);
        } else if (unchanged(f, &st)) {
            f->seen = true;
            continue;
        }
        f->seen = true;
        f->dev = st.st_dev;
        f->ino = st.st_ino;
        f->size = st.st_size;
        f->mtime = st.st_mtim;
        load_file(fs, f, path);
    }
    closedir(d);

    for (size_t i = 0; i < fs->n_files;) {
        struct fnfile *f = &fs->files[i];
        if (f->seen) {
            i++;
            continue;
        }
        char fn[sizeof(f->fn)];
        memcpy(fn, f->fn, sizeof(fn));
        fs->files[i] = fs->files[--fs->n_files];
        if (fn[0] && !owner_of(fs, fn, NULL))
            ctrl_function_delete(fs->c, fn);
    }
}

static void on_debounce(uv_timer_t *t)
{
    fnset_rescan(t->data);
}

static void on_dir_event(uv_fs_event_t *h, const char *filename, int events, int status)
{
    struct fnset *fs = h->data;
    (void)filename;
    (void)events;
    (void)status;
    /* Editors write in several steps; read once they are done. */
    uv_timer_start(&fs->debounce, on_debounce, DEBOUNCE_MS, 0);
}

static void on_rescan(uv_timer_t *t)
{
    struct fnset *fs = t->data;
    if (!fs->watching) {
        fs->watching = uv_fs_event_start(&fs->watch, on_dir_event, fs->dir, 0) == 0;
    }
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
    fs->watching = uv_fs_event_start(&fs->watch, on_dir_event, fs->dir, 0) == 0;
    uv_timer_start(&fs->rescan, on_rescan, RESCAN_MS, RESCAN_MS);
    fnset_rescan(fs);
    *ret = fs;
    return 0;
}

static void on_closed(uv_handle_t *h)
{
    struct fnset *fs = h->data;
    if (--fs->handles > 0)
        return;
    free(fs->files);
    free(fs);
}

void fnset_close(struct fnset *fs)
{
    uv_close((uv_handle_t *)&fs->watch, on_closed);
    uv_close((uv_handle_t *)&fs->debounce, on_closed);
    uv_close((uv_handle_t *)&fs->rescan, on_closed);
}
