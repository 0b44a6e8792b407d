#!/bin/bash
# Fails when a version number differs from the VERSION file: the top entry
# of debian/changelog, and relay-keys --version when a binary is given.
#
#   t/unit/check_version.sh [path/to/relay-keys]
set -euo pipefail
cd "$(dirname "$0")/../.."

version=$(cat VERSION)
pass=0 fail=0
check() {
    if [ "$2" = "$3" ]; then
        pass=$((pass + 1))
    else
        echo "not ok: $1 says '$2'; the VERSION file makes that '$3'"
        fail=$((fail + 1))
    fi
}

if ! grep -qxE '[0-9]+\.[0-9]+\.[0-9]+' VERSION; then
    echo "not ok: VERSION holds '$version', not one line MAJOR.MINOR.PATCH"
    fail=$((fail + 1))
fi
# the first line of debian/changelog: "package (VERSION) distribution; urgency=..."
top=$(sed -n '1s/^[a-z0-9.+-]* (\([^)]*\)).*/\1/p' debian/changelog)
check "debian/changelog's top entry" "$top" "$version"
if [ $# -ge 1 ]; then
    check "$1 --version" "$("$1" --version)" "relay-keys $version"
fi
echo "version $version"
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
