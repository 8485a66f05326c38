#!/usr/bin/env bash
# A stand-in for ubuntu:24.04 where no registry is reachable: Ubuntu 24.04 (noble) bootstrapped with
# debootstrap from the Ubuntu archive, then made to look like the official image in what the Dockerfile
# meets: the user `ubuntu` with uid/gid 1000, no Python, apt sources for noble, -updates and -security.
#   sudo image/stand_in_base.sh [NAME]        # default NAME: localhost/ubuntu-standin:24.04
#   make image BASE_IMAGE=localhost/ubuntu-standin:24.04
# Needs root, debootstrap and podman (or docker). Differs from the real base: it is not minimised the way
# the official image is (man pages and docs are there), and debootstrap does not check the archive's
# signature (Debian's debootstrap has no Ubuntu keyring); what is installed later by apt is checked.
set -euo pipefail
NAME=${1:-localhost/ubuntu-standin:24.04}
MIRROR=${MIRROR:-http://archive.ubuntu.com/ubuntu}
ENGINE=${ENGINE:-$(command -v podman || command -v docker)}
ROOT=$(mktemp -d /var/tmp/ubuntu-standin.XXXXXX)
trap 'rm -rf "$ROOT"' EXIT

# Debian's debootstrap may predate noble; every Ubuntu release since gutsy uses the gutsy script.
debootstrap --variant=minbase --no-check-gpg noble "$ROOT" "$MIRROR" /usr/share/debootstrap/scripts/gutsy

rm -f "$ROOT/etc/apt/sources.list"
cat > "$ROOT/etc/apt/sources.list.d/ubuntu.sources" <<SOURCES
Types: deb
URIs: $MIRROR
Suites: noble noble-updates noble-backports
Components: main restricted universe multiverse
Signed-By: /usr/share/keyrings/ubuntu-archive-keyring.gpg

Types: deb
URIs: http://security.ubuntu.com/ubuntu/
Suites: noble-security
Components: main restricted universe multiverse
Signed-By: /usr/share/keyrings/ubuntu-archive-keyring.gpg
SOURCES
# The official image has shipped this user since 23.04; a Dockerfile that adds its own uid 1000 meets it.
chroot "$ROOT" useradd --uid 1000 --user-group --create-home --shell /bin/bash --comment Ubuntu ubuntu
chroot "$ROOT" apt-get clean
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/log/*.log
if chroot "$ROOT" sh -c 'command -v python3' >/dev/null; then
    echo "the stand-in must not have Python (the real base has none)" >&2
    exit 1
fi

tar --numeric-owner -C "$ROOT" -c . | "$ENGINE" import --change 'CMD ["/bin/bash"]' - "$NAME"
echo "stand-in base: $NAME"
