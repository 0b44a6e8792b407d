/*
 * test_endpoints.c - unit tests for relay_endpoints.c: which methods and
 * paths below a relay location go upstream.
 */
#include "relay_endpoints.h"

#include <stdio.h>
#include <string.h>

#include "check.h"

/* The verdict of the default list. */
static relay_endpoint_verdict dflt(const char *method, const char *path)
{
    return relay_endpoint_judge(relay_default_endpoints, relay_default_endpoints_count, method,
                                path);
}

int main(void)
{
    relay_endpoint list[4];
    char buf[64];

    /* the default list: what Claude clients use, nothing stateful */
    CHECK(dflt("POST", "/v1/messages") == RELAY_ENDPOINT_ALLOWED, "POST /v1/messages");
    CHECK(dflt("POST", "/v1/messages/count_tokens") == RELAY_ENDPOINT_ALLOWED, "count_tokens");
    CHECK(dflt("GET", "/v1/models") == RELAY_ENDPOINT_ALLOWED, "GET /v1/models");
    CHECK(dflt("HEAD", "/v1/models") == RELAY_ENDPOINT_ALLOWED, "HEAD rides on GET");
    CHECK(dflt("GET", "/v1/models/claude-sonnet-4") == RELAY_ENDPOINT_ALLOWED, "a model");
    CHECK(dflt("GET", "/v1/models/a/b") == RELAY_ENDPOINT_ALLOWED, "below a model");
    CHECK(dflt("GET", "/v1/models/") == RELAY_ENDPOINT_UNKNOWN, "an empty model id");
    CHECK(dflt("TRACE", "/v1/messages") == RELAY_ENDPOINT_BAD_METHOD, "TRACE is refused");
    CHECK(dflt("GET", "/v1/messages") == RELAY_ENDPOINT_BAD_METHOD, "GET /v1/messages");
    CHECK(dflt("OPTIONS", "/v1/messages") == RELAY_ENDPOINT_BAD_METHOD, "OPTIONS");
    CHECK(dflt("DELETE", "/v1/models/x") == RELAY_ENDPOINT_BAD_METHOD, "DELETE a model");
    CHECK(dflt("POST", "/v1/messages/batches") == RELAY_ENDPOINT_UNKNOWN, "batches");
    CHECK(dflt("GET", "/v1/messages/batches") == RELAY_ENDPOINT_UNKNOWN, "list batches");
    CHECK(dflt("GET", "/v1/files") == RELAY_ENDPOINT_UNKNOWN, "files");
    CHECK(dflt("DELETE", "/v1/files/x") == RELAY_ENDPOINT_UNKNOWN, "delete a file");
    CHECK(dflt("POST", "/v1/messages/") == RELAY_ENDPOINT_UNKNOWN, "a trailing slash");
    CHECK(dflt("POST", "/v1//messages") == RELAY_ENDPOINT_UNKNOWN, "an empty segment");
    CHECK(dflt("POST", "/v1/models/../messages") == RELAY_ENDPOINT_UNKNOWN, "a .. segment");
    CHECK(dflt("GET", "/v1/models/..") == RELAY_ENDPOINT_UNKNOWN, "a final .. segment");
    CHECK(dflt("GET", "/v1/models/.") == RELAY_ENDPOINT_UNKNOWN, "a final . segment");
    CHECK(dflt("POST", "v1/messages") == RELAY_ENDPOINT_UNKNOWN, "no leading slash");
    CHECK(dflt("POST", "") == RELAY_ENDPOINT_UNKNOWN, "an empty path");
    CHECK(dflt("post", "/v1/messages") == RELAY_ENDPOINT_BAD_METHOD, "methods are exact");

    /* the Allow header of a 405 */
    relay_endpoint_methods(relay_default_endpoints, relay_default_endpoints_count, "/v1/messages",
                           buf, sizeof(buf));
    CHECK(strcmp(buf, "POST") == 0, "Allow: POST");
    relay_endpoint_methods(relay_default_endpoints, relay_default_endpoints_count, "/v1/models",
                           buf, sizeof(buf));
    CHECK(strcmp(buf, "GET, HEAD") == 0, "Allow: GET, HEAD");

    /* parsing RelayAllowEndpoints */
    CHECK(relay_endpoint_parse("POST /v1/messages", &list[0]) == NULL, "parse a pair");
    CHECK(strcmp(list[0].method, "POST") == 0 && strcmp(list[0].path, "/v1/messages") == 0 &&
              !list[0].below,
          "method and path");
    CHECK(relay_endpoint_parse("GET /v1/files/*", &list[1]) == NULL && list[1].below &&
              strcmp(list[1].path, "/v1/files") == 0,
          "a path with everything below it");
    CHECK(relay_endpoint_parse("GET /*", &list[2]) == NULL && list[2].below &&
              strcmp(list[2].path, "/") == 0,
          "everything below the location");
    CHECK(relay_endpoint_judge(&list[2], 1, "GET", "/page.html") == RELAY_ENDPOINT_ALLOWED,
          "GET /* covers a page");
    CHECK(relay_endpoint_judge(&list[2], 1, "POST", "/page.html") == RELAY_ENDPOINT_BAD_METHOD,
          "but only for GET");
    CHECK(relay_endpoint_judge(list, 2, "GET", "/v1/files/abc") == RELAY_ENDPOINT_ALLOWED,
          "a listed prefix");
    CHECK(relay_endpoint_judge(list, 2, "GET", "/v1/files") == RELAY_ENDPOINT_UNKNOWN,
          "the prefix itself is not listed");
    CHECK(relay_endpoint_parse("TRACE /v1/messages", &list[3]) != NULL, "TRACE is refused");
    CHECK(relay_endpoint_parse("CONNECT /x", &list[3]) != NULL, "CONNECT is refused");
    CHECK(relay_endpoint_parse("HEAD /x", &list[3]) != NULL, "HEAD is implied by GET");
    CHECK(relay_endpoint_parse("post /x", &list[3]) != NULL, "lower-case method");
    CHECK(relay_endpoint_parse("POST", &list[3]) != NULL, "no path");
    CHECK(relay_endpoint_parse("POST v1/messages", &list[3]) != NULL, "a relative path");
    CHECK(relay_endpoint_parse("POST /v1/../x", &list[3]) != NULL, "a .. segment");
    CHECK(relay_endpoint_parse("POST /v1/mess ages", &list[3]) != NULL, "a space in the path");
    CHECK(relay_endpoint_parse("POST /v1/m?x=1", &list[3]) != NULL, "a query in the path");
    CHECK(relay_endpoint_parse("POSTPOSTPOSTPOSTPOST /x", &list[3]) != NULL, "a long method");

    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
