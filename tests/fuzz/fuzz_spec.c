/* libFuzzer target for the spec parser: any bytes must give either a spec
 * that keeps every documented invariant, or a refusal with a zeroed spec
 * and a diag; never a crash, a leak or a hang. The same holds for the
 * Knative Service parser (common/knative.c), reached both through the loader
 * and directly (so mutations that break the apiVersion still walk it), and
 * its warnings come only with an accepted spec, each complete.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Iinclude \
 *       tests/fuzz/fuzz_spec.c common/spec.c common/knative.c common/yamltree.c \
 *       common/diag.c -lyaml -o fuzz_spec
 *   ./fuzz_spec -max_total_time=60 tests/fuzz/corpus-out tests/fuzz/corpus/spec
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "stoke/knative.h"
#include "stoke/spec.h"

static void check(bool ok)
{
    if (!ok)
        abort();
}

static bool is_zeroed(const struct stoke_spec *s)
{
    static const struct stoke_spec zero;
    return memcmp(s, &zero, sizeof(zero)) == 0;
}

static void check_spec(const struct stoke_spec *s)
{
    const struct stoke_scale *sc = &s->scale;
    struct stoke_spec d;
    char r1[17], r2[17];

    check(stoke_is_valid_name(s->name));
    check(s->image && s->image[0]);
    check(s->port > 0);
    check(s->env_len <= STOKE_SPEC_MAX_ENV);
    for (size_t i = 0; i < s->env_len; i++)
        check(s->env[i].name && s->env[i].value && strcmp(s->env[i].name, "PORT") != 0);
    check(sc->max == 0 || (sc->min <= sc->max && sc->initial <= sc->max));
    check(sc->target > 0 && sc->utilization >= 1 && sc->utilization <= 100);
    check(sc->window_ms >= 6000 && sc->window_ms <= 3600000);
    check(sc->panic_threshold_percent >= 110 && sc->panic_threshold_percent <= 1000);
    check(s->timeout_ms > 0 && s->queue.timeout_ms > 0 && s->readiness.period_ms > 0);
    check(s->resources.memory_bytes >= 6 * 1024 * 1024 && s->resources.cpu_millis > 0);
    check(!s->readiness.path || s->readiness.path[0] == '/');

    stoke_spec_revision(s, r1);
    if (stoke_spec_dup(s, &d) == 0) {
        stoke_spec_revision(&d, r2);
        check(strcmp(r1, r2) == 0);
        stoke_spec_done(&d);
    }
}

static void on_warning(const struct stoke_diag *w, void *data)
{
    char buf[1024];

    check(strcmp(w->file, "fuzz.yaml") == 0);
    check(w->message[0] != '\0');
    (void)stoke_diag_format(w, buf, sizeof(buf));
    (*(size_t *)data)++;
}

static void check_result(int r, struct stoke_spec *s, const struct stoke_diag *d, size_t warnings)
{
    char buf[1024];

    check(warnings <= STOKE_KNATIVE_MAX_WARNINGS);
    if (r == 0) {
        check_spec(s);
        stoke_spec_done(s);
    } else {
        check(r == -EINVAL || r == -EFBIG || r == -ENOMEM);
        check(is_zeroed(s));
        check(warnings == 0);
        check(d->message[0] != '\0');
        (void)stoke_diag_format(d, buf, sizeof(buf));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct stoke_spec s;
    struct stoke_diag d;
    size_t warnings = 0;
    char *str;
    uint64_t v;
    int r;

    r = stoke_spec_parse_ex((const char *)data, size, "fuzz.yaml", &s, &d, on_warning, &warnings);
    check_result(r, &s, &d, warnings);
    warnings = 0;
    r = stoke_knative_parse((const char *)data, size, "fuzz.yaml", &s, &d, on_warning, &warnings);
    check_result(r, &s, &d, warnings);

    /* The scalar parsers take C strings. */
    str = malloc(size + 1);
    if (!str)
        return 0;
    memcpy(str, data, size);
    str[size] = '\0';
    (void)stoke_parse_duration(str, &v);
    (void)stoke_parse_memory(str, &v);
    (void)stoke_parse_cpu(str, &v);
    (void)stoke_is_valid_name(str);
    free(str);
    return 0;
}
