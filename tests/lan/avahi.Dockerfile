# tests/lan/test_avahi.py: a Raspberry Pi OS host as far as mDNS goes: the system D-Bus and avahi-daemon with
# Debian's own configuration. Its D-Bus socket is on a volume the announce service mounts at /run/dbus, as it mounts
# the host's /run/dbus on a Pi.
ARG DEBIAN_IMAGE=debian:trixie-slim
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends avahi-daemon dbus \
 && rm -rf /var/lib/apt/lists/* \
 && rm -f /etc/avahi/services/*.service
# no user is added: dbus-daemon turns away (after authentication) a client whose uid is not in its own user
# database, and the announce service runs as nobody (65534), which every Debian and Raspberry Pi OS host has
COPY avahi-host.sh /usr/local/bin/avahi-host
ENTRYPOINT ["/usr/local/bin/avahi-host"]
