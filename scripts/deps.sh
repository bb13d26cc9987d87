#!/usr/bin/env bash
# deps.sh — make sure the Debian packages the build and the test suite need are installed.
# As root: installs what is missing with apt-get. Otherwise: prints the apt-get line and fails.
# Also cargo-deb (`make deb`), with `cargo install`, as any user.
set -euo pipefail

# Build: boring-sys needs cmake, libclang (bindgen) and git.
# Tests: real peers (Kea Control Agent + DHCPv4 and DHCPv6 servers, Icinga 2, Prometheus + promtool;
# debootstrap for the Debian 13 roots of Kea 2.6 / 3.0, scripts/peer-root.sh).
# Package (make deb, tests/package.rs): dpkg-shlibdeps (dpkg-dev) for the Depends line, objcopy
# and strip (binutils) for the debug symbols, systemd-analyze (systemd) to verify the unit, groff
# (groff-base) to render the man pages; curl for the package's smoke tests; strace to count the
# system calls `read_buffer` saves (tests/relay.rs).
PKGS=(cmake libclang-dev git debootstrap kea-ctrl-agent kea-dhcp4-server kea-dhcp6-server icinga2-bin icinga2-common prometheus
  dpkg-dev binutils systemd groff-base curl strace)
# Benchmarks (make bench): the anchors, the load generator, and perf to count system calls.
[ "${BENCH:-0}" = 1 ] && PKGS=(wrk nginx haproxy libnginx-mod-stream linux-perf)

if [ "${BENCH:-0}" != 1 ] && ! cargo deb --version >/dev/null 2>&1; then
  echo "deps: installing cargo-deb (cargo install cargo-deb --locked)"
  cargo install cargo-deb --locked --version '^3.8'
fi

if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "deps: not a Debian system; install the equivalents of: ${PKGS[*]}" >&2
  exit 0
fi
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ]; then
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "deps: missing Debian packages: ${missing[*]}" >&2
  echo "deps: run as root:  apt-get update && apt-get install -y ${missing[*]}" >&2
  exit 1
fi
