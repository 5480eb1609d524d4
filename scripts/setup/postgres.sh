#!/usr/bin/env bash
# Installs Debian's PostgreSQL server programs (initdb, pg_ctl, postgres) for the tests of
# `xray tune --storage postgres://`, when they are missing. The tests start and stop a
# throwaway server of their own (tests/cluster.rs); nothing is started here, and the
# package's own cluster service is left stopped.
# Needs root (apt-get); without it those tests skip with a printed reason (and fail under
# CI=true, where they must run).
set -euo pipefail
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "postgres: not root, not installing; the shared-search tests will skip" >&2
    exit 0
fi
# shellcheck source=scripts/lib/apt.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib/apt.sh"
apt_install_no_services postgresql
ls /usr/lib/postgresql/*/bin/initdb >/dev/null
