/*
 * relay_endpoints.h - which upstream endpoints a relay location passes on.
 *
 * An endpoint is a method and a path below the relay's location, such as
 * "POST /v1/messages"; a path ending in a slash and an asterisk also covers
 * every path below it ("GET /v1/models/" plus the asterisk). Everything else
 * is refused before the key is looked at, so an endpoint that is not listed
 * never sees the upstream credential.
 *
 * Pure C: no httpd or APR header, so a unit test links it alone.
 */
#ifndef RELAY_ENDPOINTS_H
#define RELAY_ENDPOINTS_H

#include <stddef.h>

#define RELAY_METHOD_MAX 16
#define RELAY_ENDPOINT_PATH_MAX 256

/* One allowed endpoint. */
typedef struct {
    char method[RELAY_METHOD_MAX];      /* upper case: GET, POST, ... */
    char path[RELAY_ENDPOINT_PATH_MAX]; /* "/v1/messages", without a final slash-asterisk */
    int below;                          /* it ended in slash-asterisk: every path below */
} relay_endpoint;

/* What a request's method and path are, measured against a list. */
typedef enum {
    RELAY_ENDPOINT_ALLOWED = 0, /* relay it */
    RELAY_ENDPOINT_BAD_METHOD,  /* the path is listed, with other methods only: 405 */
    RELAY_ENDPOINT_UNKNOWN      /* the path is not listed: 404 */
} relay_endpoint_verdict;

/* The list used where RelayAllowEndpoints is not given. */
extern const relay_endpoint relay_default_endpoints[];
extern const size_t relay_default_endpoints_count;

/*
 * Parse one endpoint, "METHOD /path" (optionally ending in slash-asterisk).
 * Returns NULL, or a sentence saying what is wrong (TRACE and CONNECT are
 * never relayed).
 */
const char *relay_endpoint_parse(const char *text, relay_endpoint *out);

/*
 * Judge a request. method is the request's method (HEAD counts as GET);
 * below is the path below the relay's location, starting with "/", without
 * the query string. A path with "//", "/./" or "/../" segments is unknown.
 */
relay_endpoint_verdict relay_endpoint_judge(const relay_endpoint *list, size_t n,
                                            const char *method, const char *below);

/*
 * The methods the list allows for a path, comma separated, into buf (for a
 * 405's Allow header). Returns buf.
 */
char *relay_endpoint_methods(const relay_endpoint *list, size_t n, const char *below, char *buf,
                             size_t cap);

#endif
