#!/usr/bin/env bash
# Packs target/jwtguard.wasm as a Wasm OCI image without a Docker engine: the "compat" variant
# of the Wasm OCI image format (an ordinary OCI image whose one layer holds plugin.wasm), which
# Istio's WasmPlugin pulls from oci:// URLs. Output: an OCI image layout (default target/oci,
# reference name "jwtguard"); push it with `skopeo copy oci:target/oci:jwtguard docker://…`.
# The build is reproducible: same .wasm, same digests.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/oci}
wasm=target/jwtguard.wasm
[ -f "$wasm" ] || { echo "$wasm is missing: run make wasm" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$wasm" "$work/plugin.wasm"
touch -d @0 "$work/plugin.wasm"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --mode=0644 -C "$work" -cf "$work/layer.tar" plugin.wasm
gzip -9 -n -c "$work/layer.tar" > "$work/layer.tar.gz"

digest() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

rm -rf "$out"
mkdir -p "$out/blobs/sha256"
store() { local d; d=$(digest "$1"); cp "$1" "$out/blobs/sha256/$d"; echo "$d"; }

layer=$(store "$work/layer.tar.gz")
printf '{"architecture":"wasm","os":"wasip1","config":{},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
  "$(digest "$work/layer.tar")" > "$work/config.json"
config=$(store "$work/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}],"annotations":{"module.wasm.image/variant":"compat","org.opencontainers.image.title":"jwtguard"}}' \
  "$config" "$(size "$work/config.json")" "$layer" "$(size "$work/layer.tar.gz")" > "$work/manifest.json"
manifest=$(store "$work/manifest.json")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"jwtguard"}}]}' \
  "$manifest" "$(size "$work/manifest.json")" > "$out/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' > "$out/oci-layout"
echo "oci:$out:jwtguard sha256:$manifest"
