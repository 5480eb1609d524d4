#!/usr/bin/env bash
# The pictures of docs/dicom.md: a Kermany chest X-ray put into an Orthanc of its own, routed
# by Orthanc to `xray serve --dicom-addr` as a PACS routes a study, and the results back in
# the same study: Orthanc Explorer's study page (headless Chromium) and the Grad-CAM
# Secondary Capture as Orthanc renders it.
#
#   scripts/experiments/dicom_screenshot.sh RUN_DIR [OUT_DIR=docs] [IMAGE]
# Needs Orthanc, DCMTK (scripts/setup/dicom.sh), Chromium (scripts/setup/chromium.sh) and a
# release build (make build).
set -euo pipefail
# shellcheck disable=SC2154 # pacs_http, node_port: set by pacs_start (scripts/lib/pacs.sh)
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
run=${1:?usage: dicom_screenshot.sh RUN_DIR [OUT_DIR] [IMAGE]}
out=${2:-docs}
image=${3:-../shared/datasets/pneumonia/PNEUMONIA/person1_bacteria_1.jpeg}
work=$(mktemp -d)
# shellcheck source=scripts/lib/pacs.sh
. scripts/lib/pacs.sh
trap 'pacs_stop; rm -rf "$work"' EXIT
pacs_start "$work"
node_start "$run" "$work"
api="http://127.0.0.1:$pacs_http"
img2dcm -q "$image" "$work/chest.dcm" -k "Modality=CR" -k "PatientName=Demo^Patient" \
    -k "PatientID=DEMO-1" -k "StudyDescription=Chest PA" -k "SeriesDescription=Chest PA"
instance=$(curl -sf --data-binary @"$work/chest.dcm" "$api/instances" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ID"])')
study=$(curl -sf "$api/instances/$instance/study" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ID"])')
curl -sf -X POST -d "{\"Resources\": [\"$instance\"], \"Synchronous\": true}" "$api/modalities/xray/store" >/dev/null
for _ in $(seq 100); do
    n=$(curl -sf "$api/studies/$study/series" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
    [ "$n" -ge 3 ] && break
    sleep 0.2
done
[ "$n" -ge 3 ] || { echo "the results did not arrive: see $work/serve.log" >&2; exit 1; }
sc=$(curl -sf "$api/tools/find" -d '{"Level": "Instance", "Query": {"Modality": "OT"}}' | python3 -c 'import json,sys; print(json.load(sys.stdin)[0])')
curl -sf "$api/instances/$sc/preview" -o "$out/dicom-overlay.png"
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$work/chromium" --hide-scrollbars --window-size=1100,700 \
    --virtual-time-budget=10000 --screenshot="$out/dicom-study.png" \
    "$api/app/explorer.html#study?uuid=$study" 2>/dev/null
echo "wrote $out/dicom-study.png and $out/dicom-overlay.png"
