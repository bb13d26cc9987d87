#!/usr/bin/env bash
# peer-root.sh RELEASE — a cached Debian root holding a peer release the host cannot install
# (this machine is Debian 12), for tests that run the peer with `chroot ROOT …`.
#
#   kea-2.6      trixie:                  kea-dhcp4-server kea-dhcp6-server kea-ctrl-agent
#   kea-3.0      trixie + trixie-backports: kea-dhcp4-server kea-dhcp6-server (-t trixie-backports)
#   icinga-2.14  trixie:                  icinga2-bin icinga2-common
#   icinga-2.16  forky (debootstrap's sid script; Acquire::Check-Valid-Until=false)
#
# The root is ${GATEHOUSE_PEER_ROOTS:-/var/cache/gatehouse/peer-roots}/RELEASE, made once with
# `debootstrap --variant=minbase` from the Debian mirror of /etc/apt/sources.list* (or
# $GATEHOUSE_DEBIAN_MIRROR) and marked complete by a stamp file. The last line on stdout is the
# root's path; progress goes to stderr, the tools' output to RELEASE.log beside the root (its
# tail is shown on failure).
#
# Several test binaries may call this at once: one flock per release (RELEASE.lock) serializes
# them; the first makes the root, the others wait and reuse it. A root without its stamp (an
# interrupted run) is unmounted and made again. Needs root (debootstrap, chroot, mount).
set -euo pipefail

release=${1:-}
base=${GATEHOUSE_PEER_ROOTS:-/var/cache/gatehouse/peer-roots}
stamp_name=.gatehouse-peer-root

die() {
  echo "peer-root: $*" >&2
  exit 1
}
say() { echo "peer-root: $*" >&2; }

# === what each release is =========================================================================
extra_suite=""   # another suite of the same mirror, added to the root's sources
script=""        # debootstrap script when the suite has none of its own name
apt_opts=()      # options of every apt-get in the root
install_opts=()  # options of apt-get install
case "$release" in
  kea-2.6)
    suite=trixie
    pkgs=(kea-dhcp4-server kea-dhcp6-server kea-ctrl-agent)
    ;;
  kea-3.0)
    suite=trixie
    extra_suite=trixie-backports
    install_opts=(-t trixie-backports)
    pkgs=(kea-dhcp4-server kea-dhcp6-server)
    ;;
  icinga-2.14)
    suite=trixie
    pkgs=(icinga2-bin icinga2-common)
    ;;
  icinga-2.16)
    suite=forky
    script=/usr/share/debootstrap/scripts/sid
    apt_opts=(-o Acquire::Check-Valid-Until=false)
    pkgs=(icinga2-bin icinga2-common)
    ;;
  *)
    die "usage: $0 kea-2.6|kea-3.0|icinga-2.14|icinga-2.16 (got '${release}')"
    ;;
esac
# What the stamp records: a root made for another definition is made again.
spec="release=$release suite=$suite extra=$extra_suite install=${install_opts[*]:-} pkgs=${pkgs[*]}"

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot and mount need it); run: sudo $0 $release"

root="$base/$release"
stamp="$root/$stamp_name"
log="$base/$release.log"

# === helpers =======================================================================================

# Mount points at or below $1, deepest first (from /proc/self/mountinfo; octal escapes decoded).
mounts_under() {
  local dir
  dir=$(realpath -m "$1")
  awk '{ print $5 }' /proc/self/mountinfo | while read -r m; do
    m=$(printf '%b' "$m")
    case "$m" in "$dir" | "$dir"/*) echo "$m" ;; esac
  done | sort -r
}

# Unmounts everything under $1; fails when something stays mounted.
unmount_all() {
  local m left
  while read -r m; do
    [ -n "$m" ] || continue
    umount "$m" 2>/dev/null || umount -l "$m" || true
  done < <(mounts_under "$1")
  left=$(mounts_under "$1")
  [ -z "$left" ] || die "still mounted under $1, not removing it: $left"
}

# Removes a half-made root: never while anything is mounted in it.
remove_root() {
  [ -e "$root" ] || return 0
  unmount_all "$root"
  rm -rf --one-file-system "$root"
}

fail_with_log() {
  say "FAILED: $*"
  if [ -s "$log" ]; then
    echo "---- last lines of $log ----" >&2
    tail -n 40 "$log" >&2
    echo "----" >&2
  fi
  exit 1
}

# The Debian mirror apt uses here (deb822 URIs: or one-line deb), not a security or third-party one.
host_mirror() {
  local m
  m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
    sed -n -E 's/^[[:space:]]*(URIs:[[:space:]]*|deb[[:space:]]+(\[[^]]*\][[:space:]]+)?)([a-z]+:\/\/[^[:space:]]+\/debian)\/?([[:space:]].*)?$/\3/p' |
    head -n 1)
  [ -n "$m" ] || return 1
  echo "$m"
}

now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }

# === lock, then make the root if it is not there ===================================================
mkdir -p "$base"
exec 9>"$base/$release.lock"
if ! flock -n 9; then
  say "another run is making $release; waiting for $base/$release.lock"
  flock -w 1800 9 || die "timed out after 30 min waiting for $base/$release.lock"
fi

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$spec" ]; then
  echo "$root"
  exit 0
fi

start=$(now)
if [ -e "$root" ]; then
  say "removing the incomplete (or outdated) root $root"
  remove_root
fi
: >"$log"

if ! command -v debootstrap >/dev/null 2>&1; then
  say "installing debootstrap with apt-get"
  {
    apt-get -o DPkg::Lock::Timeout=300 update &&
      DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y debootstrap
  } >>"$log" 2>&1 || fail_with_log "could not install debootstrap"
fi
if [ -n "$script" ] && [ ! -f "$script" ]; then
  die "debootstrap has no $script"
fi

mirror=${GATEHOUSE_DEBIAN_MIRROR:-$(host_mirror)} ||
  die "no Debian mirror found in /etc/apt/sources.list*; set GATEHOUSE_DEBIAN_MIRROR=http://…/debian"

# While the root is being made: proc is mounted in it; unmount it whatever happens.
cleanup() { unmount_all "$root" 2>/dev/null || true; }
trap cleanup EXIT
trap 'exit 130' INT TERM

say "making $release ($suite from $mirror) in $root; log: $log"
t=$(now)
debootstrap --variant=minbase "$suite" "$root" "$mirror" ${script:+"$script"} >>"$log" 2>&1 ||
  fail_with_log "debootstrap $suite from $mirror"
say "debootstrap $suite: $(took "$t")"

if [ -n "$extra_suite" ]; then
  echo "deb $mirror $extra_suite main" >"$root/etc/apt/sources.list.d/$extra_suite.list"
fi
# Nothing installed in the root may start a service (postinsts call invoke-rc.d).
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
[ -s "$root/etc/resolv.conf" ] || cp /etc/resolv.conf "$root/etc/resolv.conf"

# icinga2-bin's postinst aborts (exit 134) without /proc.
mount -t proc proc "$root/proc" || fail_with_log "mount proc in $root"

t=$(now)
chroot "$root" env DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 \
  apt-get "${apt_opts[@]}" -o DPkg::Lock::Timeout=300 update >>"$log" 2>&1 ||
  fail_with_log "apt-get update in $root"
chroot "$root" env DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 \
  apt-get "${apt_opts[@]}" install -y --no-install-recommends "${install_opts[@]}" "${pkgs[@]}" >>"$log" 2>&1 ||
  fail_with_log "apt-get install ${install_opts[*]:-} ${pkgs[*]} in $root"
chroot "$root" apt-get clean >>"$log" 2>&1 || true
say "apt-get install ${pkgs[*]}: $(took "$t")"

unmount_all "$root"
trap - EXIT
echo "$spec" >"$stamp"
say "$release ready in $(took "$start")"
echo "$root"
