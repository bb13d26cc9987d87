#!/usr/bin/env bash
# deps.sh — make sure the Debian packages the build and the test suite need are installed.
# As root: installs what is missing with apt-get. Otherwise: prints the apt-get line and fails.
# Then the test OpenID provider's npm packages (tests/oidc), with `npm ci`, as any user.
# Also cargo-deb (`make deb`), with `cargo install`, as any user.
set -euo pipefail

# Build: boring-sys needs cmake, libclang (bindgen) and git.
# Tests: real peers (Kea Control Agent + DHCPv4 and DHCPv6 servers, Icinga 2, Prometheus + promtool;
# debootstrap for the Debian 13 roots of Kea 2.6 / 3.0, scripts/peer-root.sh).
# Package (make deb, tests/package.rs): dpkg-shlibdeps (dpkg-dev) for the Depends line, objcopy
# and strip (binutils) for the debug symbols, systemd-analyze (systemd) to verify the unit, groff
# (groff-base) to render the man pages; curl for the package's smoke tests; strace to count the
# system calls `read_buffer` saves (tests/relay.rs). Node.js and npm for the test OpenID provider
# (tests/oidc, installed with `npm ci` below).
PKGS=(cmake libclang-dev git debootstrap kea-ctrl-agent kea-dhcp4-server kea-dhcp6-server icinga2-bin icinga2-common prometheus
  dpkg-dev binutils systemd groff-base curl strace nodejs)
# npm: Debian's package, unless npm is already there or the installed nodejs is one that bundles
# it (NodeSource's nodejs provides and conflicts with `npm`: installing Debian's would replace it).
if ! command -v npm >/dev/null 2>&1 \
  && ! dpkg-query -W -f='${Provides}' nodejs 2>/dev/null | grep -qw npm; then
  PKGS+=(npm)
fi
# Benchmarks (make bench): the anchors, the load generator, and perf to count system calls.
[ "${BENCH:-0}" = 1 ] && PKGS=(wrk nginx haproxy libnginx-mod-stream linux-perf)

if [ "${BENCH:-0}" != 1 ] && ! cargo deb --version >/dev/null 2>&1; then
  echo "deps: installing cargo-deb (cargo install cargo-deb --locked)"
  cargo install cargo-deb --locked --version '^3.8'
fi

# The test OpenID provider's node_modules (tests/oidc), once the packages are there: `npm ci`
# when missing or older than package-lock.json (npm writes node_modules/.package-lock.json last).
oidc_modules() {
  [ "${BENCH:-0}" = 1 ] && return 0
  local dir
  dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/oidc"
  local need=()
  command -v node >/dev/null 2>&1 || need+=(node)
  command -v npm >/dev/null 2>&1 || need+=(npm)
  if [ ${#need[@]} -gt 0 ]; then
    echo "deps: missing ${need[*]}, needed for the test OpenID provider (tests/oidc):" \
      "install Node.js with its npm (Debian: apt-get install nodejs npm)" >&2
    exit 1
  fi
  if [ ! -e "$dir/node_modules/.package-lock.json" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
    echo "deps: installing the test OpenID provider (npm ci --prefix tests/oidc)"
    npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error
  fi
}

if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "deps: not a Debian system; install the equivalents of: ${PKGS[*]}" >&2
  oidc_modules
  exit 0
fi
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
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
fi
oidc_modules
