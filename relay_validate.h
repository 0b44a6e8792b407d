/*
 * relay_validate.h - checks of what admins type for a key (pure C, no httpd).
 * One table of field rules (relay_field_rules) serves the admin's forms, its
 * JSON API and relay-keys, so all refuse the same input for the same reason.
 */
#ifndef RELAY_VALIDATE_H
#define RELAY_VALIDATE_H

#include <stddef.h>

#define RELAY_NAME_MAX_CHARS 100
#define RELAY_DESCRIPTION_MAX_CHARS 500
/* the largest limit: what a 32-bit signed number holds, as claude-relay-service reads it */
#define RELAY_LIMIT_MAX 2147483647L
/* the longest text a list search may be */
#define RELAY_SEARCH_MAX_CHARS 100

typedef enum {
    RELAY_VALID = 0,
    RELAY_INVALID_REQUIRED, /* empty where a value is needed */
    RELAY_INVALID_TOO_LONG, /* more characters than allowed */
    RELAY_INVALID_ENCODING, /* not UTF-8, or control characters */
    RELAY_INVALID_NUMBER,   /* not a whole number from 0 to 2^31-1 */
    RELAY_INVALID_DATE,     /* not YYYY-MM-DD or an ISO-8601 UTC time */
    RELAY_INVALID_PAST,     /* a date that has already passed */
    RELAY_INVALID_CHOICE    /* a switch that is neither "true" nor "false" */
} relay_invalid;

/* Characters in a UTF-8 string, or -1 when it is not valid UTF-8. */
long relay_utf8_chars(const char *s);

/* A key name: required, at most RELAY_NAME_MAX_CHARS characters, no control characters. */
relay_invalid relay_check_name(const char *s);

/* A description: optional, at most RELAY_DESCRIPTION_MAX_CHARS; tabs and line breaks allowed. */
relay_invalid relay_check_description(const char *s);

/* A list search: optional, one line, at most RELAY_SEARCH_MAX_CHARS characters. */
relay_invalid relay_check_search(const char *s);

/* A limit as typed ("" = 0 = unlimited); *out receives the number. */
relay_invalid relay_check_limit(const char *s, long *out);

/*
 * An expiry as typed: "" (none) or a date/time that must be later than
 * now_iso. out receives "" or the canonical ISO-8601 form (25 bytes).
 */
relay_invalid relay_check_expiry(const char *s, const char *now_iso, char *out);

/* How a key field's value is checked. */
typedef enum {
    RELAY_FIELD_TEXT,      /* one line of text, at most max_chars characters */
    RELAY_FIELD_MULTILINE, /* text where tabs and line breaks are allowed */
    RELAY_FIELD_LIMIT,     /* a whole number from 0 to RELAY_LIMIT_MAX; "" = 0 = unlimited */
    RELAY_FIELD_EXPIRY,    /* "" (never) or a date/time later than now */
    RELAY_FIELD_SWITCH     /* "true" or "false" */
} relay_field_kind;

/* The fields of a key that admins set, in the order forms show them. */
typedef enum {
    RELAY_FIELD_NAME,
    RELAY_FIELD_DESCRIPTION,
    RELAY_FIELD_TOKEN_LIMIT,
    RELAY_FIELD_CONCURRENCY_LIMIT,
    RELAY_FIELD_EXPIRES_AT,
    RELAY_FIELD_IS_ACTIVE,
    RELAY_FIELD_COUNT
} relay_field;

/* The rule of one field. */
typedef struct {
    const char *name;      /* the form field, the JSON member and the apikey:{id} field alike */
    relay_field_kind kind; /* how its value is checked */
    int required;          /* an empty value is refused (RELAY_INVALID_REQUIRED) */
    long max_chars;        /* text kinds: the most characters allowed; 0 for the others */
    int on_create;         /* may be given when a key is made (isActive starts "true") */
} relay_field_rule;

/* Every field's rule, indexed by relay_field. */
extern const relay_field_rule relay_field_rules[RELAY_FIELD_COUNT];

/* The field called name (as forms and the API call it), or -1. */
int relay_field_find(const char *name);

/* Room for any stored value relay_field_check writes but text: an expiry, a limit, a switch. */
#define RELAY_FIELD_STORED_MAX 32

/*
 * Check a value as typed for field f against its rule (now_iso: the current
 * time, for expiries). On RELAY_VALID *stored is the value to store: the text
 * itself for text kinds, else the canonical form written into buf
 * (RELAY_FIELD_STORED_MAX bytes): digits for a limit, "" or ISO-8601 for an
 * expiry, "true" or "false" for a switch.
 */
relay_invalid relay_field_check(relay_field f, const char *typed, const char *now_iso, char *buf,
                                const char **stored);

#endif
