/*
 * test_validate.c - unit tests for relay_validate.c: what the admin and
 * relay-keys accept for a key's name, description, limits and expiry.
 */
#include "relay_validate.h"

#include <stdio.h>
#include <string.h>

#include "check.h"

/* n copies of a UTF-8 character. */
static void repeat(char *out, const char *ch, int n)
{
    out[0] = '\0';
    while (n-- > 0) {
        strcat(out, ch);
    }
}

int main(void)
{
    char buf[4096], exp[32];
    long n;

    CHECK(relay_utf8_chars("") == 0, "empty string has 0 characters");
    CHECK(relay_utf8_chars("h\xc3\xa9llo") == 5, "two-byte character counts once");
    CHECK(relay_utf8_chars("\xe4\xb8\xad\xe6\x96\x87") == 2, "CJK characters count once each");
    CHECK(relay_utf8_chars("\xf0\x9f\x98\x80") == 1, "four-byte emoji counts once");
    CHECK(relay_utf8_chars("\xc0\xaf") == -1, "two-byte overlong '/' is invalid");
    CHECK(relay_utf8_chars("\xe0\x82\x80") == -1, "three-byte overlong is invalid");
    CHECK(relay_utf8_chars("\xf0\x80\x80\x80") == -1, "four-byte overlong is invalid");
    CHECK(relay_utf8_chars("\xed\xa0\x80") == -1, "a surrogate is invalid");
    CHECK(relay_utf8_chars("\xf4\x90\x80\x80") == -1, "past U+10FFFF is invalid");
    CHECK(relay_utf8_chars("\x80") == -1, "a lone continuation byte is invalid");
    CHECK(relay_utf8_chars("\xe4\xb8") == -1, "a cut sequence is invalid");

    CHECK(relay_check_name("team a") == RELAY_VALID, "plain name");
    CHECK(relay_check_name("") == RELAY_INVALID_REQUIRED, "empty name");
    CHECK(relay_check_name("  \t") == RELAY_INVALID_REQUIRED, "blank name");
    CHECK(relay_check_name(NULL) == RELAY_INVALID_REQUIRED, "missing name");
    repeat(buf, "\xe4\xb8\xad", 100);
    CHECK(relay_check_name(buf) == RELAY_VALID, "100 CJK characters (300 bytes) fit");
    repeat(buf, "a", 101);
    CHECK(relay_check_name(buf) == RELAY_INVALID_TOO_LONG, "101 characters are too long");
    CHECK(relay_check_name("a\nb") == RELAY_INVALID_ENCODING, "line break in a name");
    CHECK(relay_check_name("a\x1b[31mb") == RELAY_INVALID_ENCODING, "escape in a name");
    CHECK(relay_check_name("a\xc2\x9b"
                           "b") == RELAY_INVALID_ENCODING,
          "C1 control in a name");
    CHECK(relay_check_name("a\xff") == RELAY_INVALID_ENCODING, "invalid UTF-8 in a name");
    CHECK(relay_check_name("<script>alert(1)</script>") == RELAY_VALID,
          "markup is text (escaped when shown)");

    CHECK(relay_check_description("") == RELAY_VALID, "empty description");
    CHECK(relay_check_description("line 1\nline 2\tend") == RELAY_VALID,
          "tabs and line breaks in a description");
    CHECK(relay_check_description("x\x01y") == RELAY_INVALID_ENCODING,
          "C0 control in a description");
    repeat(buf, "d", 500);
    CHECK(relay_check_description(buf) == RELAY_VALID, "500 characters fit");
    repeat(buf, "d", 501);
    CHECK(relay_check_description(buf) == RELAY_INVALID_TOO_LONG, "501 are too long");

    CHECK(relay_check_limit("", &n) == RELAY_VALID && n == 0, "empty limit is 0");
    CHECK(relay_check_limit("5", &n) == RELAY_VALID && n == 5, "limit 5");
    CHECK(relay_check_limit("-1", &n) == RELAY_INVALID_NUMBER, "negative limit");
    CHECK(relay_check_limit("1.5", &n) == RELAY_INVALID_NUMBER, "fractional limit");
    CHECK(relay_check_limit("2147483648", &n) == RELAY_INVALID_NUMBER, "limit past 2^31-1");

    CHECK(relay_check_expiry("", "2026-01-01T00:00:00.000Z", exp) == RELAY_VALID && exp[0] == 0,
          "no expiry");
    CHECK(relay_check_expiry("2026-06-30", "2026-01-01T00:00:00.000Z", exp) == RELAY_VALID &&
              strcmp(exp, "2026-06-30T23:59:59.999Z") == 0,
          "a date expires at the end of that day");
    CHECK(relay_check_expiry("2025-12-31", "2026-01-01T00:00:00.000Z", exp) == RELAY_INVALID_PAST,
          "a past date");
    CHECK(relay_check_expiry("31/12/2030", "2026-01-01T00:00:00.000Z", exp) == RELAY_INVALID_DATE,
          "not a date");

    /* the one table of field rules the forms, the API and relay-keys share */
    {
        const char *now = "2026-01-01T00:00:00.000Z", *stored = "";
        char out[RELAY_FIELD_STORED_MAX];

        CHECK(relay_field_find("name") == RELAY_FIELD_NAME, "the name field is found");
        CHECK(relay_field_find("isActive") == RELAY_FIELD_IS_ACTIVE, "the switch is found");
        CHECK(relay_field_find("apiKey") == -1, "the key hash is no field admins set");
        CHECK(relay_field_rules[RELAY_FIELD_NAME].max_chars == RELAY_NAME_MAX_CHARS,
              "the name rule holds the name's length");
        CHECK(!relay_field_rules[RELAY_FIELD_IS_ACTIVE].on_create, "isActive is not set on create");
        CHECK(relay_field_check(RELAY_FIELD_TOKEN_LIMIT, " 12 ", now, out, &stored) ==
                      RELAY_VALID &&
                  strcmp(stored, "12") == 0,
              "a limit is stored as its digits");
        CHECK(relay_field_check(RELAY_FIELD_CONCURRENCY_LIMIT, "", now, out, &stored) ==
                      RELAY_VALID &&
                  strcmp(stored, "0") == 0,
              "an empty limit is stored as 0");
        CHECK(relay_field_check(RELAY_FIELD_CONCURRENCY_LIMIT, "-1", now, out, &stored) ==
                      RELAY_INVALID_NUMBER &&
                  stored == NULL,
              "a negative limit is refused and nothing is to be stored");
        CHECK(relay_field_check(RELAY_FIELD_EXPIRES_AT, "2999-01-31", now, out, &stored) ==
                      RELAY_VALID &&
                  strcmp(stored, "2999-01-31T23:59:59.999Z") == 0,
              "a date is stored as the end of its day");
        CHECK(relay_field_check(RELAY_FIELD_EXPIRES_AT, "2025-12-31", now, out, &stored) ==
                  RELAY_INVALID_PAST,
              "a past date is refused");
        CHECK(relay_field_check(RELAY_FIELD_IS_ACTIVE, "false", now, out, &stored) == RELAY_VALID &&
                  strcmp(stored, "false") == 0,
              "the switch takes false");
        CHECK(relay_field_check(RELAY_FIELD_IS_ACTIVE, "yes", now, out, &stored) ==
                  RELAY_INVALID_CHOICE,
              "the switch refuses yes");
        CHECK(relay_field_check(RELAY_FIELD_DESCRIPTION, "a\tb\nc", now, out, &stored) ==
                      RELAY_VALID &&
                  strcmp(stored, "a\tb\nc") == 0,
              "a description keeps tabs and line breaks");
        repeat(buf, "n", RELAY_NAME_MAX_CHARS + 1);
        CHECK(relay_field_check(RELAY_FIELD_NAME, buf, now, out, &stored) == RELAY_INVALID_TOO_LONG,
              "a name one character too long is refused");
        CHECK(relay_check_search("") == RELAY_VALID, "an empty search is every key");
        CHECK(relay_check_search("a\nb") == RELAY_INVALID_ENCODING, "a search is one line");
        repeat(buf, "s", RELAY_SEARCH_MAX_CHARS + 1);
        CHECK(relay_check_search(buf) == RELAY_INVALID_TOO_LONG, "a search has a length limit");
    }

    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
