#!/usr/bin/env bash
# Time from C-STORE received to results stored in the PACS, for `xray serve --dicom-addr`:
# an Orthanc of its own (temporary folder, loopback ports) as the PACS and --results-to,
# N Kermany JPEGs made into DICOM by DCMTK's img2dcm (JPEG baseline, as a modality would
# send them) and sent one association at a time with storescu, one every PACE seconds (as
# images arrive from modalities; 0 sends them back to back). Prints the median and 95th percentile over the images of: receipt to the SR
# stored in Orthanc, receipt to both SR and SC stored, and the node's own work per image
# (decode, predict, Grad-CAM, objects queued).
#
#   scripts/bench/dicom_latency.sh RUN_DIR [N=100] [PACE=1]
# Orthanc itself stores about a dozen instances a second on a small disk (it syncs each file):
# back to back, two results an image outrun it and the latency is its queue.
# Needs Orthanc, DCMTK (scripts/setup/dicom.sh) and a release build (make build).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
run=${1:?usage: dicom_latency.sh RUN_DIR [N]}
n=${2:-100}
pace=${3:-1}
data=../shared/datasets/pneumonia
xray=target/release/xray
[ -x "$xray" ] || { echo "dicom_latency: build first (make build)" >&2; exit 1; }
work=$(mktemp -d)
# shellcheck source=scripts/lib/pacs.sh
. scripts/lib/pacs.sh
trap 'pacs_stop; rm -rf "$work"' EXIT
pacs_start "$work"
node_start "$run" "$work" --audit-log "$work/audit.jsonl"
mkdir -p "$work/dcm"
mapfile -t jpegs < <(find "$data" -name '*.jpeg' | sort)
for jpeg in "${jpegs[@]:0:$n}"; do
    img2dcm -q "$jpeg" "$work/dcm/$(basename "$jpeg" .jpeg).dcm" -k "Modality=CR" -k "PatientID=BENCH"
done
echo "dicom_latency: $n images, one association each, one every $pace s" >&2
for f in "$work"/dcm/*.dcm; do
    storescu -xy -aec XRAY 127.0.0.1 "$node_port" "$f"
    sleep "$pace"
done
for _ in $(seq 600); do
    [ -z "$(find "$work/queue" -name '*.dcm' 2>/dev/null)" ] && break
    sleep 0.1
done
python3 - "$work/audit.jsonl" "$n" <<'PY'
import json, statistics, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
work = [l["seconds"] for l in lines if l.get("dicom") == "c-store" and l.get("status") == "0x0000"]
by_image = {}
for l in lines:
    if l.get("dicom") == "results-sent" and l.get("result") == "stored":
        stamp, _, kind = l["file"].split("-", 2)
        by_image.setdefault(stamp, {})[kind.split(".")[0]] = l["detail"]["seconds_since_received"]
sr = [v["sr"] for v in by_image.values() if "sr" in v]
both = [max(v.values()) for v in by_image.values() if len(v) == 2]
def row(name, xs):
    xs = sorted(xs)
    p95 = xs[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))]
    print(f"| {name} | {len(xs)} | {statistics.median(xs) * 1000:.0f} ms | {p95 * 1000:.0f} ms |")
print("| from C-STORE received to | images | median | p95 |")
print("|---|---:|---:|---:|")
row("SR stored in Orthanc", sr)
row("SR and SC stored in Orthanc", both)
row("results queued (the node's own work)", work)
if len(work) != int(sys.argv[2]):
    sys.exit(f"only {len(work)} of {sys.argv[2]} images were answered")
PY
