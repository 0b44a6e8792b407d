/*
 * relay_validate.h - checks of what admins type for a key (pure C, no httpd).
 * Shared by the admin pages and the JSON API so both refuse the same input.
 */
#ifndef RELAY_VALIDATE_H
#define RELAY_VALIDATE_H

#define RELAY_NAME_MAX_CHARS 100
#define RELAY_DESCRIPTION_MAX_CHARS 500

typedef enum {
    RELAY_VALID = 0,
    RELAY_INVALID_REQUIRED,    /* empty where a value is needed */
    RELAY_INVALID_TOO_LONG,    /* more characters than allowed */
    RELAY_INVALID_ENCODING,    /* not UTF-8, or control characters */
    RELAY_INVALID_NUMBER,      /* not a whole number from 0 to 2^31-1 */
    RELAY_INVALID_DATE,        /* not YYYY-MM-DD or an ISO-8601 UTC time */
    RELAY_INVALID_PAST         /* a date that has already passed */
} relay_invalid;

/* Characters in a UTF-8 string, or -1 when it is not valid UTF-8. */
long relay_utf8_chars(const char *s);

/* A key name: required, at most 100 characters, no control characters. */
relay_invalid relay_check_name(const char *s);

/* A description: optional, at most 500 characters; tabs and line breaks allowed. */
relay_invalid relay_check_description(const char *s);

/* A limit as typed ("" = 0 = unlimited); *out receives the number. */
relay_invalid relay_check_limit(const char *s, long *out);

/*
 * An expiry as typed: "" (none) or a date/time that must be later than
 * now_iso. out receives "" or the canonical ISO-8601 form (25 bytes).
 */
relay_invalid relay_check_expiry(const char *s, const char *now_iso, char *out);

#endif
