/*
 * relay_endpoints.c - the allow-list of upstream endpoints (see the header).
 */
#include "relay_endpoints.h"

#include <string.h>

/*
 * The Messages API as Claude clients use it. Stateful endpoints (batches,
 * files) are left out: on the upstream account they list and change what
 * every team sharing it has made, and their tokens would escape the limits.
 */
const relay_endpoint relay_default_endpoints[] = {
    {"POST", "/v1/messages", 0},
    {"POST", "/v1/messages/count_tokens", 0},
    {"GET", "/v1/models", 0},
    {"GET", "/v1/models", 1},
};
const size_t relay_default_endpoints_count =
    sizeof(relay_default_endpoints) / sizeof(relay_default_endpoints[0]);

/* Whether c may appear in a path segment of an endpoint. */
static int path_char_ok(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '/' ||
           c == '_' || c == '-' || c == '.' || c == '~';
}

const char *relay_endpoint_parse(const char *text, relay_endpoint *out)
{
    const char *sp = strchr(text, ' ');
    const char *path;
    size_t mlen, plen, i;

    memset(out, 0, sizeof(*out));
    if (!sp) {
        return "an endpoint is a method and a path, such as \"POST /v1/messages\"";
    }
    mlen = (size_t)(sp - text);
    if (mlen == 0 || mlen >= RELAY_METHOD_MAX) {
        return "the method is missing or too long";
    }
    for (i = 0; i < mlen; i++) {
        char c = text[i];
        if (c < 'A' || c > 'Z') {
            return "the method must be written in capitals, such as GET or POST";
        }
        out->method[i] = c;
    }
    if (!strcmp(out->method, "TRACE") || !strcmp(out->method, "CONNECT")) {
        return "TRACE and CONNECT are never relayed";
    }
    if (!strcmp(out->method, "HEAD")) {
        return "HEAD is allowed wherever GET is: list GET";
    }
    path = sp + 1;
    while (*path == ' ') {
        path++;
    }
    plen = strlen(path);
    if (plen == 0 || path[0] != '/') {
        return "the path must start with /";
    }
    if (plen >= 2 && strcmp(path + plen - 2, "/*") == 0) {
        out->below = 1;
        plen -= 2;
    }
    if (plen >= RELAY_ENDPOINT_PATH_MAX) {
        return "the path is too long";
    }
    for (i = 0; i < plen; i++) {
        if (!path_char_ok(path[i])) {
            return "the path may hold letters, digits and / _ - . ~ only (and end in /*)";
        }
    }
    if (plen == 0) {
        /* "/" and slash-asterisk: every path below the location */
        out->path[0] = '/';
    }
    else {
        memcpy(out->path, path, plen);
        out->path[plen] = '\0';
    }
    if (strstr(out->path, "//") || strstr(out->path, "/./") || strstr(out->path, "/../")) {
        return "the path has an empty, . or .. segment";
    }
    return NULL;
}

/* Whether a request path has a segment that could mean another path upstream. */
static int path_suspect(const char *p)
{
    size_t n = strlen(p);

    if (strstr(p, "//") || strstr(p, "/./") || strstr(p, "/../")) {
        return 1;
    }
    return (n >= 2 && strcmp(p + n - 2, "/.") == 0) || (n >= 3 && strcmp(p + n - 3, "/..") == 0);
}

/* Whether an endpoint's path covers a request path. */
static int path_matches(const relay_endpoint *e, const char *below)
{
    size_t n = strlen(e->path);

    if (!e->below) {
        return strcmp(below, e->path) == 0;
    }
    /* a slash-asterisk path covers what is below it, not the path itself */
    if (strcmp(e->path, "/") == 0) {
        return below[0] == '/' && below[1] != '\0';
    }
    return strncmp(below, e->path, n) == 0 && below[n] == '/' && below[n + 1] != '\0';
}

/* Whether an endpoint's method covers a request method (HEAD rides on GET). */
static int method_matches(const relay_endpoint *e, const char *method)
{
    return strcmp(e->method, method) == 0 ||
           (strcmp(method, "HEAD") == 0 && strcmp(e->method, "GET") == 0);
}

relay_endpoint_verdict relay_endpoint_judge(const relay_endpoint *list, size_t n,
                                            const char *method, const char *below)
{
    int path_known = 0;
    size_t i;

    if (!below || below[0] != '/' || path_suspect(below)) {
        return RELAY_ENDPOINT_UNKNOWN;
    }
    for (i = 0; i < n; i++) {
        if (!path_matches(&list[i], below)) {
            continue;
        }
        if (method_matches(&list[i], method)) {
            return RELAY_ENDPOINT_ALLOWED;
        }
        path_known = 1;
    }
    return path_known ? RELAY_ENDPOINT_BAD_METHOD : RELAY_ENDPOINT_UNKNOWN;
}

char *relay_endpoint_methods(const relay_endpoint *list, size_t n, const char *below, char *buf,
                             size_t cap)
{
    size_t used = 0, i, j;

    if (cap == 0) {
        return buf;
    }
    buf[0] = '\0';
    for (i = 0; i < n; i++) {
        size_t mlen;
        int seen = 0;

        if (!path_matches(&list[i], below)) {
            continue;
        }
        for (j = 0; j < i; j++) {
            if (path_matches(&list[j], below) && !strcmp(list[j].method, list[i].method)) {
                seen = 1;
            }
        }
        mlen = strlen(list[i].method);
        if (seen || used + mlen + 3 > cap) {
            continue;
        }
        if (used) {
            memcpy(buf + used, ", ", 2);
            used += 2;
        }
        memcpy(buf + used, list[i].method, mlen);
        used += mlen;
        buf[used] = '\0';
        if (!strcmp(list[i].method, "GET") && used + 6 + 1 <= cap) {
            memcpy(buf + used, ", HEAD", 6);
            used += 6;
            buf[used] = '\0';
        }
    }
    return buf;
}
