#!/bin/sh
# The avahihost container's init (tests/lan/avahi.Dockerfile): the system bus, then avahi-daemon in the foreground
# (its log on stderr, the container's log). Debian's configurations are used unchanged; --no-rlimits because the
# rlimit-nproc of avahi-daemon.conf counts every process of avahi's uid on the machine, other containers' included.
set -eu
rm -f /run/dbus/pid  # a stale one from the container's last start stops dbus-daemon
dbus-uuidgen --ensure
dbus-daemon --system --fork
exec avahi-daemon --no-rlimits
