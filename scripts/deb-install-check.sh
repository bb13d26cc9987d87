#!/usr/bin/env bash
# deb-install-check.sh — install the package `make deb` built on THIS machine and check what an
# operator gets: for CI (a throwaway machine, root) after `make test`; by hand on a test box.
#   install: the gatehouse user, root:gatehouse setgid key folders, the conffile;
#   the first step the config's header documents, then `gatehouse check` as root and as the
#   service user (who must read the keys);
#   the unit's ExecStartPre/ExecStart/ExecReload lines run as its User= the way systemd runs
#   them (systemd is not PID 1 in a container): start, a request, reload = graceful upgrade to
#   a new pid with no refused request, stop;
#   upgrade (dpkg -i again) keeps an edited conffile and the keys; remove keeps the config;
#   purge removes config, keys and logs, and keeps the user.
# It leaves the package purged; the gatehouse user stays (as Debian does).
set -euo pipefail
cd "$(dirname "$0")/.."

LOG=/tmp/gatehouse-deb-install-check.log   # what the unit's Exec lines print (the journal's part)
: >"$LOG"
fail() {
  [ -s "$LOG" ] && { echo "--- $LOG:"; tail -50 "$LOG"; } >&2
  echo "deb-install-check: FAILED: $*" >&2
  exit 1
}
step() { echo "== $*"; }
[ "$(id -u)" = 0 ] || fail "run as root (it installs the package)"
debs=("${CARGO_TARGET_DIR:-target}"/debian/gatehouse_*.deb)
[ ${#debs[@]} = 1 ] && [ -f "${debs[0]}" ] || fail "expected one package, found: ${debs[*]} (make deb)"
deb=${debs[0]}
for p in 5665 9100; do
  ! (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null || fail "127.0.0.1:$p is in use (the shipped config listens there)"
done

CONF=/etc/gatehouse/gatehouse.yaml
UNIT=/usr/lib/systemd/system/gatehouse.service
PID=/run/gatehouse/gatehouse.pid
as_service() { runuser -u gatehouse -- "$@"; }
mode() { stat -c '%U:%G %a' "$1"; }
request() {  # the dev client's Kea command through the edge: the HTTP status
  curl -sS --max-time 10 -o /dev/null -w '%{http_code}' --cacert /etc/gatehouse/certs/ca.crt \
    --cert /etc/gatehouse/certs/client.crt --key /etc/gatehouse/certs/client.key \
    -H 'Content-Type: application/json' -d '{"command": "version-get"}' https://localhost:5665/
}

step "install $deb"
dpkg -i "$deb"
getent passwd gatehouse | grep -q ':/usr/sbin/nologin$' || fail "no gatehouse system user with nologin"
[ "$(mode /etc/gatehouse/certs)" = "root:gatehouse 2750" ] || fail "/etc/gatehouse/certs is $(mode /etc/gatehouse/certs)"
[ "$(mode /var/log/gatehouse)" = "gatehouse:gatehouse 750" ] || fail "/var/log/gatehouse is $(mode /var/log/gatehouse)"
dpkg-query -W -f='${Conffiles}\n' gatehouse | grep -q "^ $CONF " || fail "$CONF is not a conffile"
[ -f /usr/share/man/man1/gatehouse.1.gz ] && [ -f /usr/share/bash-completion/completions/gatehouse ] ||
  fail "man page or completion missing"
gatehouse --version

step "before the first step, check names the missing certificate"
if out=$(gatehouse check -c $CONF 2>&1); then fail "check passed without certificates"; fi
grep -q 'listeners\[0\].tls.cert' <<<"$out" || fail "unexpected check output: $out"

step "the first step, as the config's header documents it"
first=$(sed -n 's/^#[[:space:]]*\(gatehouse dev-certs .*\)$/\1/p' $CONF | head -1)
[ -n "$first" ] || fail "no 'gatehouse dev-certs' step in $CONF"
echo "$first"
$first
[ "$(mode /etc/gatehouse/certs/server.key)" = "root:gatehouse 640" ] ||
  fail "server.key is $(mode /etc/gatehouse/certs/server.key)"
gatehouse check -c $CONF
as_service gatehouse check -c $CONF
if runuser -u nobody -- cat /etc/gatehouse/certs/server.key >/dev/null 2>&1; then
  fail "another user reads the key"
fi

step "the unit's Exec lines as User=gatehouse (what systemctl start/reload/stop run)"
exec_lines() { sed -n "s/^$1=//p" $UNIT; }
grep -qx 'User=gatehouse' $UNIT || fail "the unit does not run as gatehouse"
install -d -o gatehouse -g gatehouse -m 0750 /run/gatehouse   # RuntimeDirectory=
run_lines() {
  local key=$1 mainpid=${2:-} line
  while IFS= read -r line; do
    line=${line//\$MAINPID/$mainpid}
    echo "$key: $line"
    # shellcheck disable=SC2086  # systemd splits Exec lines on spaces too
    as_service $line >>"$LOG" 2>&1 || fail "$key=$line failed"
  done < <(exec_lines "$key")
}
wait_pid_change() {  # the pid file names a live process other than $1, within 10 s
  local old=$1 new
  for _ in $(seq 100); do
    new=$(cat $PID 2>/dev/null || true)
    if [ -n "$new" ] && [ "$new" != "$old" ] && kill -0 "$new" 2>/dev/null; then echo "$new"; return; fi
    sleep 0.1
  done
  fail "no new pid in $PID (was $old)"
}
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/5665) 2>/dev/null && return; sleep 0.1; done; fail "nothing listens on 5665"; }
run_lines ExecStartPre
run_lines ExecStart
pid1=$(wait_pid_change none)
wait_port
[ "$(stat -c %U /proc/"$pid1")" = gatehouse ] || fail "pid $pid1 does not run as gatehouse"
status=$(request)
[ "$status" = 403 ] || fail "dev-client got $status, not the shipped rules' default deny (403)"
# Requests all through the reload: none may fail.
(
  fails=0
  for _ in $(seq 60); do [ "$(request || true)" = 403 ] || fails=$((fails + 1)); sleep 0.05; done
  echo $fails >/tmp/gatehouse-reload-fails
) &
load=$!
sleep 0.5
run_lines ExecReload "$pid1"
pid2=$(wait_pid_change "$pid1")
wait $load
[ "$(cat /tmp/gatehouse-reload-fails)" = 0 ] || fail "$(cat /tmp/gatehouse-reload-fails) requests failed during the reload"
for _ in $(seq 300); do kill -0 "$pid1" 2>/dev/null || break; sleep 0.1; done
! kill -0 "$pid1" 2>/dev/null || fail "the old process $pid1 still runs 30 s after the reload"
[ "$(request)" = 403 ] || fail "no answer after the reload"
echo "reload: pid $pid1 -> $pid2, no request failed"
kill -TERM "$pid2"   # KillSignal=
for _ in $(seq 300); do kill -0 "$pid2" 2>/dev/null || break; sleep 0.1; done
! kill -0 "$pid2" 2>/dev/null || fail "pid $pid2 still runs 30 s after SIGTERM"

step "upgrade (dpkg -i again) keeps an edited config and the keys"
echo "# edited by the operator" >>$CONF
key_sum=$(sha256sum /etc/gatehouse/certs/server.key)
dpkg -i "$deb"
tail -1 $CONF | grep -q "edited by the operator" || fail "the upgrade replaced the edited config"
[ "$(sha256sum /etc/gatehouse/certs/server.key)" = "$key_sum" ] || fail "the upgrade changed the keys"
gatehouse check -c $CONF

step "remove keeps the config, purge removes config, keys and logs, keeps the user"
dpkg -r gatehouse
[ ! -e /usr/bin/gatehouse ] || fail "dpkg -r left /usr/bin/gatehouse"
[ -f $CONF ] && [ -f /etc/gatehouse/certs/server.key ] || fail "dpkg -r removed the config or keys"
dpkg -P gatehouse
[ ! -e /etc/gatehouse ] && [ ! -e /var/log/gatehouse ] || fail "purge left /etc/gatehouse or /var/log/gatehouse"
getent passwd gatehouse >/dev/null || fail "purge removed the user"
rm -f /tmp/gatehouse-reload-fails "$LOG"
echo "deb-install-check: ok"
