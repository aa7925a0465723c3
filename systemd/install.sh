#!/bin/sh
# Install the lock as a systemd service (run as root from the project folder).
set -eu
PREFIX=$(cd "$(dirname "$0")/.." && pwd)
getent group lock >/dev/null || groupadd --system lock
id lock >/dev/null 2>&1 || useradd --system --gid lock --home-dir /var/lib/lock --shell /usr/sbin/nologin lock
# the gallery's folder now, so that people can be enrolled (as the lock user) before the first start
install -d -o lock -g lock -m 0750 /var/lib/lock
for g in gpio video; do getent group "$g" >/dev/null && usermod -aG "$g" lock || true; done
install -d -m 0755 /etc/lock
# config.yaml leaves door.relay_active_high blank: the lock refuses to start until it is set
[ -f /etc/lock/config.yaml ] || install -m 0640 -g lock "$PREFIX/config.yaml" /etc/lock/config.yaml
# `lock ...` for the commands in the README
case "$(readlink /usr/local/bin/lock 2>/dev/null || true)" in */.venv/bin/lock) ours=yes ;; *) ours=no ;; esac
if [ "$ours" = yes ] || { [ ! -e /usr/local/bin/lock ] && [ ! -L /usr/local/bin/lock ]; }; then
    ln -sfn "$PREFIX/.venv/bin/lock" /usr/local/bin/lock
else
    echo "note: /usr/local/bin/lock is something else: left alone (the commands are in $PREFIX/.venv/bin)" >&2
fi
sed "s#@PREFIX@#$PREFIX#g" "$PREFIX/systemd/lock.service" > /etc/systemd/system/lock.service
systemctl daemon-reload
echo "installed: edit /etc/lock/config.yaml (door.relay_active_high must be set), then: systemctl enable --now lock"
