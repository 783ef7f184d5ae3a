#!/usr/bin/env bash
# Set up netstack on a fresh Debian/Ubuntu machine and run it, or run its tests.
#
#   bash deploy/bootstrap.sh run [netstack run flags...]   # as root: creates tap0, answers as 192.0.2.2
#   bash deploy/bootstrap.sh test [pytest args...]         # as root: installs the test tools, runs pytest
#   bash deploy/bootstrap.sh setup                         # only install (e.g. before going offline)
#
# It installs only what is missing (Debian packages, then a virtualenv in .venv with the project;
# the project is reinstalled only when its sources changed), so running it again is quick.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${NETSTACK_VENV:-$ROOT/.venv}
MODE=${1:-run}
shift || true

BUILD_PACKAGES=(python3 python3-venv python3-dev gcc libffi-dev)
TEST_PACKAGES=(iproute2 iputils-ping arping tcpdump tshark hping3 netcat-openbsd prometheus systemd systemd-container dnsmasq-base curl iperf3 radvd ethtool procps)

need_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "bootstrap: run this as root (sudo bash deploy/bootstrap.sh $MODE): the stack needs CAP_NET_ADMIN" >&2
        exit 1
    fi
}

apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if ! command -v apt-get >/dev/null; then
        echo "bootstrap: please install: ${missing[*]}" >&2
        return 0
    fi
    echo "bootstrap: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    # tshark asks whether non-root users may capture; answer for it.
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

python_ok() {
    command -v python3 >/dev/null && python3 -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
}

source_stamp() {
    # What the install depends on: the project's files and how it was installed.
    {
        echo "$*"
        find pyproject.toml setup.py MANIFEST.in ffi netstack -type f \
            \( -name '*.py' -o -name '*.c' -o -name '*.toml' -o -name '*.in' \) -print0 |
            sort -z | xargs -0 sha256sum
    } | sha256sum | cut -d' ' -f1
}

setup_venv() {
    # Arguments are pip's: a plain install to run; for the tests an editable one, because the
    # test suite imports the source tree and so needs the compiled module built in place.
    local stamp_file="$VENV/.netstack-install" stamp
    stamp=$(source_stamp "$@")
    if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ]; then
        return 0
    fi
    if ! python_ok || ! command -v cc >/dev/null; then
        apt_install "${BUILD_PACKAGES[@]}"
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$VENV/bin/python" -m pip install -q "$@"
    echo "$stamp" >"$stamp_file"
}

need_root
case "$MODE" in
    setup)
        setup_venv -e "$ROOT[test]"
        ;;
    run)
        setup_venv -e "$ROOT[test]"
        exec "$VENV/bin/netstack" run "$@"
        ;;
    test)
        apt_install "${TEST_PACKAGES[@]}"
        setup_venv -e "$ROOT[test]"
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    *)
        echo "usage: bash deploy/bootstrap.sh run|test|setup [args...]" >&2
        exit 2
        ;;
esac
