#!/usr/bin/env bash
# Writes the documentation as the Debian package installs it into OUT (`make deb` calls it):
# ARCHITECTURE.md and docs/*.md with their links into the source tree pointed at what the
# package has instead (conf/ is installed as examples/, the unit under /usr/lib/systemd); links
# to source files the package does not hold (tests/, src/, benches/) become plain text.
# tests/package.rs checks that every relative link in the installed docs resolves.
set -euo pipefail
out=${1:?usage: package-docs.sh OUT}
here=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$out"
mkdir -p "$out/docs"
rewrite() {
    sed -e 's#\](\.\./conf/gatehouse\.service)#](../../../../lib/systemd/system/gatehouse.service)#g' \
        -e 's#\](\.\./conf/)#](../examples/)#g' \
        -e 's#\](\.\./conf/\([^)]*\))#](../examples/\1)#g' \
        -e 's#\[\([^]]*\)\](\.\./\(tests\|src\|benches\)/\([^)]*\))#\1 (in the source tree: \2/\3)#g' \
        "$1"
}
for f in "$here"/docs/*.md; do
    rewrite "$f" > "$out/docs/$(basename "$f")"
done
cp "$here/ARCHITECTURE.md" "$out/ARCHITECTURE.md"
