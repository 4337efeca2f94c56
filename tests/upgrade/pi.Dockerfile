# A stand-in for a Raspberry Pi as scripts/deploy-pi sees it (tests/upgrade/test_deploy_pi.py): an SSH server with
# Docker's client and the compose plugin, driving the test machine's Docker through its socket.
ARG DEBIAN_IMAGE=debian:trixie-slim
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends openssh-server docker-cli docker-compose ca-certificates gzip \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /run/sshd
CMD ["/usr/sbin/sshd", "-D", "-e"]
