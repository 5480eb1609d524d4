# shellcheck shell=bash
# Sourced by the scripts that run xray as a DICOM node beside a PACS of their own: an Orthanc
# in a temporary folder on loopback ports, with xray registered as modality `xray`.
#   pacs_start WORK   sets pacs_http, pacs_dicom, node_port; starts Orthanc (pid: pacs_pid)
#   node_start RUN WORK [FLAGS...]   starts xray serve --dicom-addr (pid: node_pid)
#   pacs_stop         stops both
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

pacs_start() {
    local work=$1
    pacs_http=$(free_port); pacs_dicom=$(free_port); node_port=$(free_port)
    cat > "$work/orthanc.json" <<JSON
{"Name": "xray-pacs", "StorageDirectory": "$work/storage", "IndexDirectory": "$work/storage",
 "HttpPort": $pacs_http, "DicomPort": $pacs_dicom, "DicomAet": "ORTHANC",
 "RemoteAccessAllowed": false, "AuthenticationEnabled": false,
 "DicomModalities": {"xray": ["XRAY", "127.0.0.1", $node_port]}, "Plugins": []}
JSON
    Orthanc "$work/orthanc.json" > "$work/orthanc.log" 2>&1 &
    pacs_pid=$!
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$pacs_http/system" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "Orthanc did not start: see $work/orthanc.log" >&2
    return 1
}

node_start() {
    local run=$1 work=$2
    shift 2
    target/release/xray serve --checkpoint "$run" --addr 127.0.0.1:0 \
        --dicom-addr "127.0.0.1:$node_port" --results-to "ORTHANC@127.0.0.1:$pacs_dicom" \
        --results-queue "$work/queue" "$@" > "$work/serve.log" 2>&1 &
    node_pid=$!
    for _ in $(seq 100); do
        echoscu -aec XRAY 127.0.0.1 "$node_port" 2>/dev/null && return 0
        sleep 0.2
    done
    echo "xray serve did not start: see $work/serve.log" >&2
    return 1
}

pacs_stop() {
    [ -n "${node_pid:-}" ] && kill "$node_pid" 2>/dev/null
    [ -n "${pacs_pid:-}" ] && kill "$pacs_pid" 2>/dev/null
    wait 2>/dev/null || true
}
