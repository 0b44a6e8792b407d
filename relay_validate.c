/*
 * relay_validate.c - checks of what admins type for a key (see relay_validate.h).
 */
#include "relay_validate.h"
#include "relay_keys.h"

#include <string.h>

long relay_utf8_chars(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    long n = 0;

    /* the smallest code point each sequence length may encode */
    static const unsigned int min_for[4] = {0, 0x80, 0x800, 0x10000};

    while (*p) {
        int extra, len;
        unsigned int cp;
        if (*p < 0x80) {
            p++;
            n++;
            continue;
        }
        if ((*p & 0xe0) == 0xc0) {
            extra = 1;
            cp = *p & 0x1f;
        }
        else if ((*p & 0xf0) == 0xe0) {
            extra = 2;
            cp = *p & 0x0f;
        }
        else if ((*p & 0xf8) == 0xf0) {
            extra = 3;
            cp = *p & 0x07;
        }
        else {
            return -1;
        }
        p++;
        len = extra;
        while (extra-- > 0) {
            if ((*p & 0xc0) != 0x80) {
                return -1;
            }
            cp = (cp << 6) | (*p & 0x3f);
            p++;
        }
        /* overlong forms, surrogates and values past Unicode */
        if (cp < min_for[len] || (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff) {
            return -1;
        }
        n++;
    }
    return n;
}

/*
 * Whether valid UTF-8 s holds control characters: C0, DEL and C1 (U+0080 to
 * U+009F, encoded 0xc2 0x80..0x9f); tab and line breaks allowed if multiline.
 */
static int has_control(const char *s, int multiline)
{
    const unsigned char *p = (const unsigned char *)s;

    for (; *p; p++) {
        if (*p == 0x7f || (*p < 0x20 && !(multiline && (*p == '\t' || *p == '\n' || *p == '\r')))) {
            return 1;
        }
        if (*p == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f) {
            return 1;
        }
    }
    return 0;
}

/* Whether s has something other than white space. */
static int has_visible(const char *s)
{
    for (; *s; s++) {
        if (*s != ' ' && *s != '\t' && *s != '\r' && *s != '\n') {
            return 1;
        }
    }
    return 0;
}

relay_invalid relay_check_name(const char *s)
{
    long n;

    if (!s || !has_visible(s)) {
        return RELAY_INVALID_REQUIRED;
    }
    n = relay_utf8_chars(s);
    if (n < 0 || has_control(s, 0)) {
        return RELAY_INVALID_ENCODING;
    }
    return n > RELAY_NAME_MAX_CHARS ? RELAY_INVALID_TOO_LONG : RELAY_VALID;
}

relay_invalid relay_check_description(const char *s)
{
    long n;

    if (!s) {
        return RELAY_VALID;
    }
    n = relay_utf8_chars(s);
    if (n < 0 || has_control(s, 1)) {
        return RELAY_INVALID_ENCODING;
    }
    return n > RELAY_DESCRIPTION_MAX_CHARS ? RELAY_INVALID_TOO_LONG : RELAY_VALID;
}

relay_invalid relay_check_limit(const char *s, long *out)
{
    *out = 0;
    if (!s) {
        return RELAY_VALID;
    }
    return relay_parse_limit(s, out) == 0 ? RELAY_VALID : RELAY_INVALID_NUMBER;
}

relay_invalid relay_check_expiry(const char *s, const char *now_iso, char *out)
{
    out[0] = '\0';
    if (!s || !has_visible(s)) {
        return RELAY_VALID;
    }
    while (*s == ' ') {
        s++;
    }
    if (relay_iso8601_normalize(s, out) != 0) {
        out[0] = '\0';
        return RELAY_INVALID_DATE;
    }
    if (strcmp(out, now_iso) <= 0) {
        out[0] = '\0';
        return RELAY_INVALID_PAST;
    }
    return RELAY_VALID;
}
