#!/usr/bin/env bash
# Installs Debian's chromium when it is missing (the dashboard tests load
# pages in it) and prints its path. Idempotent; needs root (or sudo) only
# when it installs.
set -euo pipefail

found() {
    for name in chromium chromium-browser; do
        if path=$(command -v "$name" 2>/dev/null); then
            echo "$path"
            return 0
        fi
    done
    return 1
}

if found; then
    exit 0
fi

as_root=()
if [ "$(id -u)" -ne 0 ]; then
    as_root=(sudo -n)
fi
# One install at a time: parallel tests may all find it missing.
exec 9>"${TMPDIR:-/tmp}/flowrun-chromium-install.lock"
flock 9
if ! found >/dev/null; then
    echo "chromium.sh: installing Debian's chromium" >&2
    export DEBIAN_FRONTEND=noninteractive
    "${as_root[@]}" apt-get -o DPkg::Lock::Timeout=300 update -qq >&2
    "${as_root[@]}" apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends chromium >&2
fi

if ! found; then
    echo "chromium.sh: chromium is still missing after apt-get install" >&2
    exit 1
fi
