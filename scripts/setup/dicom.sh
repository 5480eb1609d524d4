#!/usr/bin/env bash
# Installs the real DICOM parts the tests of `xray serve --dicom-addr` talk to, when they
# are missing: Orthanc (the PACS) with its DICOMweb plugin (for STOW-RS), DCMTK (echoscu, storescu, dsrdump, dcmdump: the modality
# and the inspector) and dicom3tools (dciodvfy, which validates what xray writes).
# The tests start and stop their own Orthanc in a temporary folder (tests/dicom.rs);
# nothing is started here, and the package's own service is left stopped.
# Needs root (apt-get); without it those tests skip with a printed reason (and fail under
# CI=true, where they must run).
set -euo pipefail
plugin=/usr/share/orthanc/plugins/libOrthancDicomWeb.so
have() {
    command -v Orthanc >/dev/null && command -v storescu >/dev/null &&
        command -v dciodvfy >/dev/null && [ -e "$plugin" ]
}
have && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "dicom: not root, not installing; the DICOM node tests will skip" >&2
    exit 0
fi
# shellcheck source=scripts/lib/apt.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib/apt.sh"
apt_install_no_services --no-install-recommends orthanc orthanc-dicomweb dcmtk dicom3tools
have
