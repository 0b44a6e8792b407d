/*
 * relay_validate.c - checks of what admins type for a key (see relay_validate.h).
 */
#include "relay_validate.h"
#include "relay_keys.h"
#include "relay_schema.h"

#include <stdio.h>
#include <string.h>

const relay_field_rule relay_field_rules[RELAY_FIELD_COUNT] = {
    [RELAY_FIELD_NAME] = {RELAY_F_NAME, RELAY_FIELD_TEXT, 1, RELAY_NAME_MAX_CHARS, 1},
    [RELAY_FIELD_DESCRIPTION] = {RELAY_F_DESCRIPTION, RELAY_FIELD_MULTILINE, 0,
                                 RELAY_DESCRIPTION_MAX_CHARS, 1},
    [RELAY_FIELD_TOKEN_LIMIT] = {RELAY_F_TOKEN_LIMIT, RELAY_FIELD_LIMIT, 0, 0, 1},
    [RELAY_FIELD_CONCURRENCY_LIMIT] = {RELAY_F_CONCURRENCY_LIMIT, RELAY_FIELD_LIMIT, 0, 0, 1},
    [RELAY_FIELD_EXPIRES_AT] = {RELAY_F_EXPIRES_AT, RELAY_FIELD_EXPIRY, 0, 0, 1},
    [RELAY_FIELD_IS_ACTIVE] = {RELAY_F_IS_ACTIVE, RELAY_FIELD_SWITCH, 1, 0, 0},
};

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

/* Text under a rule: required or not, at most rule->max_chars, no control characters. */
static relay_invalid check_text(const relay_field_rule *rule, const char *s)
{
    long n;

    if (!s || !has_visible(s)) {
        return rule->required ? RELAY_INVALID_REQUIRED : RELAY_VALID;
    }
    n = relay_utf8_chars(s);
    if (n < 0 || has_control(s, rule->kind == RELAY_FIELD_MULTILINE)) {
        return RELAY_INVALID_ENCODING;
    }
    return n > rule->max_chars ? RELAY_INVALID_TOO_LONG : RELAY_VALID;
}

relay_invalid relay_check_name(const char *s)
{
    return check_text(&relay_field_rules[RELAY_FIELD_NAME], s);
}

relay_invalid relay_check_description(const char *s)
{
    return check_text(&relay_field_rules[RELAY_FIELD_DESCRIPTION], s);
}

relay_invalid relay_check_search(const char *s)
{
    static const relay_field_rule search = {"search", RELAY_FIELD_TEXT, 0, RELAY_SEARCH_MAX_CHARS,
                                            0};
    return check_text(&search, s);
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

int relay_field_find(const char *name)
{
    int f;

    for (f = 0; name && f < RELAY_FIELD_COUNT; f++) {
        if (strcmp(name, relay_field_rules[f].name) == 0) {
            return f;
        }
    }
    return -1;
}

relay_invalid relay_field_check(relay_field f, const char *typed, const char *now_iso, char *buf,
                                const char **stored)
{
    const relay_field_rule *rule = &relay_field_rules[f];
    relay_invalid v = RELAY_VALID;
    long n;

    buf[0] = '\0';
    *stored = buf;
    switch (rule->kind) {
    case RELAY_FIELD_TEXT:
    case RELAY_FIELD_MULTILINE:
        v = check_text(rule, typed);
        *stored = typed ? typed : "";
        break;
    case RELAY_FIELD_LIMIT:
        v = relay_check_limit(typed, &n);
        if (v == RELAY_VALID) {
            snprintf(buf, RELAY_FIELD_STORED_MAX, "%ld", n);
        }
        break;
    case RELAY_FIELD_EXPIRY:
        v = relay_check_expiry(typed, now_iso, buf);
        break;
    case RELAY_FIELD_SWITCH:
        if (!typed ||
            (strcmp(typed, RELAY_ACTIVE_TRUE) != 0 && strcmp(typed, RELAY_ACTIVE_FALSE) != 0)) {
            v = RELAY_INVALID_CHOICE;
        }
        else {
            snprintf(buf, RELAY_FIELD_STORED_MAX, "%s", typed);
        }
        break;
    }
    if (v != RELAY_VALID) {
        buf[0] = '\0';
        *stored = NULL;
    }
    return v;
}
