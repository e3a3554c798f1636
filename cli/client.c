/* stokectl's admin API client; see client.h. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <curl/curl.h>

#include "client.h"

#define TOKEN_MAX 4096
#define CONNECT_TIMEOUT_MS 10000L

static int read_token(const char *path, char **ret)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        int err = errno;
        fprintf(stderr, "stokectl: token file %s: %s\n", path, strerror(err));
        return -err;
    }
    char line[TOKEN_MAX + 2];
    int r = -EINVAL;
    if (!fgets(line, sizeof(line), f)) {
        fprintf(stderr, "stokectl: token file %s: empty\n", path);
        goto out;
    }
    line[strcspn(line, "\r\n")] = '\0';
    if (line[0] == '\0') {
        fprintf(stderr, "stokectl: token file %s: the first line is empty\n", path);
        goto out;
    }
    *ret = strdup(line);
    r = *ret ? 0 : -ENOMEM;
out:
    fclose(f);
    return r;
}

int client_init(struct client *c, const char *server, const char *token_file)
{
    memset(c, 0, sizeof(*c));
    c->server = server;
    c->timeout_ms = 60000;
    if (strncmp(server, "unix:", 5) == 0) {
        const char *path = server + 5;
        if (path[0] == '\0' || strlen(path) >= sizeof(c->unix_path)) {
            fprintf(stderr, "stokectl: --server %s: the socket path must be 1..%zu bytes\n", server,
                    sizeof(c->unix_path) - 1);
            return -EINVAL;
        }
        c->is_unix = true;
        snprintf(c->unix_path, sizeof(c->unix_path), "%s", path);
        snprintf(c->base, sizeof(c->base), "http://localhost");
    } else if (strncmp(server, "http://", 7) == 0 || strncmp(server, "https://", 8) == 0) {
        size_t n = strlen(server);
        while (n > 0 && server[n - 1] == '/')
            n--;
        const char *host = server + (server[4] == 's' ? 8 : 7);
        bool bad = n >= sizeof(c->base) || host >= server + n;
        for (const char *p = host; !bad && p < server + n; p++)
            bad = strchr("/?#@ ", *p) != NULL || (unsigned char)*p < 0x21;
        if (bad) {
            fprintf(stderr,
                    "stokectl: --server %s: expected unix:/PATH or http://HOST:PORT "
                    "(no path)\n",
                    server);
            return -EINVAL;
        }
        memcpy(c->base, server, n);
        c->base[n] = '\0';
    } else {
        fprintf(stderr, "stokectl: --server %s: expected unix:/PATH or http://HOST:PORT\n", server);
        return -EINVAL;
    }
    if (token_file && token_file[0]) {
        int r = read_token(token_file, &c->token);
        if (r < 0)
            return r;
    }
    return 0;
}

void client_done(struct client *c)
{
    free(c->token);
    c->token = NULL;
}

void reply_done(struct reply *r)
{
    stoke_buf_done(&r->body);
    json_object_put(r->json);
    r->json = NULL;
}

const char *reply_error(const struct reply *r)
{
    json_object *e = NULL;
    if (r->json && json_object_object_get_ex(r->json, "error", &e) &&
        json_object_is_type(e, json_type_string))
        return json_object_get_string(e);
    return NULL;
}

struct transfer {
    CURL *curl;
    struct reply *reply;
    FILE *out; /* streaming: where a 200 answer goes */
    volatile int *stop;
    bool overflow;
    bool write_failed;
};

static size_t on_write(char *data, size_t size, size_t nmemb, void *arg)
{
    struct transfer *t = arg;
    size_t n = size * nmemb;
    if (t->out) {
        long status = 0;
        (void)curl_easy_getinfo(t->curl, CURLINFO_RESPONSE_CODE, &status);
        if (status == 200) {
            if (fwrite(data, 1, n, t->out) != n || fflush(t->out) != 0) {
                t->write_failed = true;
                return 0; /* aborts the transfer: nobody reads our output any more */
            }
            return n;
        }
    }
    if (stoke_buf_append(&t->reply->body, data, n) < 0) {
        t->overflow = true;
        return 0;
    }
    return n;
}

static int on_progress(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    (void)dltotal;
    (void)dlnow;
    (void)ultotal;
    (void)ulnow;
    struct transfer *t = arg;
    return t->stop && *t->stop ? 1 : 0;
}

/* Why a unix socket could not be used: curl only says it could not
 * connect, while the errno (no such file, permission denied, refused) is
 * what the user needs. */
static const char *unix_reason(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return strerror(errno);
    const char *why = NULL;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        why = strerror(errno);
    close(fd);
    return why;
}

static void print_transfer_error(const struct client *c, CURLcode rc, const char *errbuf)
{
    const char *detail = errbuf[0] ? errbuf : curl_easy_strerror(rc);
    if (c->is_unix && rc == CURLE_COULDNT_CONNECT) {
        const char *why = unix_reason(c->unix_path);
        if (why)
            detail = why;
    }
    fprintf(stderr, "stokectl: cannot reach %s at %s: %s\n", c->peer ? c->peer : "the controller",
            c->server, detail);
    if (rc == CURLE_COULDNT_CONNECT || rc == CURLE_OPERATION_TIMEDOUT)
        fprintf(stderr, "stokectl: %s\n",
                c->hint ? c->hint
                        : "is stoke-controller running there? Choose another with --server or "
                          "STOKE_SERVER.");
}

static int perform(struct client *c, const char *method, const char *path, const char *body,
                   size_t body_len, const char *content_type, FILE *out, volatile int *stop,
                   struct reply *ret)
{
    char url[1024];
    char errbuf[CURL_ERROR_SIZE] = "";
    struct curl_slist *headers = NULL;
    struct transfer t = {.reply = ret, .out = out, .stop = stop};
    int r = -EIO;

    memset(ret, 0, sizeof(*ret));
    stoke_buf_init(&ret->body, CLIENT_MAX_BODY);
    if ((size_t)snprintf(url, sizeof(url), "%s%s", c->base, path) >= sizeof(url)) {
        fprintf(stderr, "stokectl: the request's URL is too long\n");
        return -EINVAL;
    }
    t.curl = curl_easy_init();
    if (!t.curl) {
        fprintf(stderr, "stokectl: out of memory\n");
        return -ENOMEM;
    }
    CURL *h = t.curl;
    headers = curl_slist_append(headers, "Accept: application/json");
    headers = curl_slist_append(headers, "Expect:");
    if (body && content_type) {
        char ct[128];
        snprintf(ct, sizeof(ct), "Content-Type: %s", content_type);
        headers = curl_slist_append(headers, ct);
    }
    if (c->token) {
        size_t n = strlen(c->token) + 32;
        char *auth = malloc(n);
        if (auth) {
            snprintf(auth, n, "Authorization: Bearer %s", c->token);
            headers = curl_slist_append(headers, auth);
            explicit_bzero(auth, n);
            free(auth);
        }
    }
    if (!headers) {
        fprintf(stderr, "stokectl: out of memory\n");
        r = -ENOMEM;
        goto out;
    }
    (void)curl_easy_setopt(h, CURLOPT_URL, url);
    if (c->is_unix)
        (void)curl_easy_setopt(h, CURLOPT_UNIX_SOCKET_PATH, c->unix_path);
    (void)curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    if (strcmp(method, "GET") == 0)
        (void)curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
    if (body) {
        (void)curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        (void)curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
    }
    (void)curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    (void)curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_write);
    (void)curl_easy_setopt(h, CURLOPT_WRITEDATA, &t);
    (void)curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    (void)curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    (void)curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, CONNECT_TIMEOUT_MS);
    (void)curl_easy_setopt(h, CURLOPT_USERAGENT, "stokectl/" STOKE_VERSION);
    /* The token must not travel anywhere the user did not name. */
    (void)curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
    (void)curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    if (out) {
        (void)curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
        (void)curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
        (void)curl_easy_setopt(h, CURLOPT_XFERINFODATA, &t);
    } else {
        (void)curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, c->timeout_ms);
    }

    CURLcode rc = curl_easy_perform(h);
    (void)curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &ret->status);
    if (rc == CURLE_ABORTED_BY_CALLBACK && stop && *stop) {
        r = 0; /* Ctrl-C: the user ended it */
        goto out;
    }
    if (rc == CURLE_WRITE_ERROR && t.write_failed) {
        r = 0; /* our reader went away (a closed pipe): nothing more to do */
        goto out;
    }
    if (rc == CURLE_WRITE_ERROR && t.overflow) {
        fprintf(stderr, "stokectl: the answer from %s is over %u MiB\n", c->server,
                CLIENT_MAX_BODY >> 20);
        goto out;
    }
    if (rc != CURLE_OK) {
        print_transfer_error(c, rc, errbuf);
        goto out;
    }
    if (ret->body.len > 0 && ret->body.data[0] == '{') {
        enum json_tokener_error jerr;
        ret->json = json_tokener_parse_verbose(ret->body.data, &jerr);
    }
    r = 0;
out:
    curl_slist_free_all(headers);
    curl_easy_cleanup(h);
    if (r < 0)
        reply_done(ret); /* callers free a reply only when one came */
    return r;
}

int client_request(struct client *c, const char *method, const char *path, const char *body,
                   size_t body_len, const char *content_type, struct reply *ret)
{
    return perform(c, method, path, body, body_len, content_type, NULL, NULL, ret);
}

int client_stream(struct client *c, const char *path, FILE *out, volatile int *stop,
                  struct reply *ret)
{
    return perform(c, "GET", path, NULL, 0, NULL, out, stop, ret);
}

void client_print_error(const struct client *c, const char *what, const struct reply *r)
{
    const char *err = reply_error(r);
    json_object *f = NULL;
    const char *field = NULL;
    if (r->json && json_object_object_get_ex(r->json, "field", &f) &&
        json_object_is_type(f, json_type_string))
        field = json_object_get_string(f);
    if (err && field)
        fprintf(stderr, "stokectl: %s: %s (field %s)\n", what, err, field);
    else if (err)
        fprintf(stderr, "stokectl: %s: %s\n", what, err);
    else if (r->body.len > 0 && r->body.len < 512)
        fprintf(stderr, "stokectl: %s: HTTP %ld from %s: %.*s\n", what, r->status, c->server,
                (int)strcspn(r->body.data, "\r\n"), r->body.data);
    else
        fprintf(stderr, "stokectl: %s: HTTP %ld from %s\n", what, r->status, c->server);
    if (r->status == 401)
        fprintf(stderr, "stokectl: the controller at %s refused the credentials: %s\n", c->server,
                c->token ? "check the token in --token-file or STOKE_TOKEN_FILE"
                         : "it wants a bearer token; give --token-file or STOKE_TOKEN_FILE");
}
