# shellcheck shell=bash
# Sourced by scripts/setup/: Debian packages installed as root, quietly, with `apt-get update`
# only when the first try fails, and no service started by their install scripts.
#   apt_install_no_services [APT-GET FLAGS...] PKG...
apt_install_no_services() {
    # policy-rc.d exiting 101: the packages must not start their own services (the tests
    # start their own servers).
    local policy=/usr/sbin/policy-rc.d created=
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && created=1
    fi
    local status=0
    apt-get install -y "$@" >/dev/null 2>&1 ||
        { apt-get update -qq && apt-get install -y "$@" >/dev/null; } || status=$?
    if [ -n "$created" ]; then rm -f "$policy"; fi
    return "$status"
}
