#!/bin/bash
# Fails when the directives the module defines and the README's directive
# table drift apart.
set -euo pipefail
cd "$(dirname "$0")/../.."

code=$(grep -oE 'AP_INIT_[A-Z0-9_]+\("Relay[A-Za-z]+"' relay_config.c | grep -oE 'Relay[A-Za-z]+' | sort -u)
doc=$(grep -oE '^\| `Relay[A-Za-z]+`' README.md | grep -oE 'Relay[A-Za-z]+' | sort -u)

pass=0 fail=0
for d in $code; do
    if grep -qx "$d" <<<"$doc"; then pass=$((pass + 1)); else echo "not ok: $d is not in the README's directive table"; fail=$((fail + 1)); fi
done
for d in $doc; do
    grep -qx "$d" <<<"$code" || { echo "not ok: the README documents $d, which the module does not define"; fail=$((fail + 1)); }
done
# every config field has a merge line and its create default
if t/unit/check_merge.pl; then pass=$((pass + 1)); else fail=$((fail + 1)); fi

echo "directives documented: $pass"
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
