#!/usr/bin/env bash
# Builds the gantry image FROM scratch (no base image is pulled).
#
#   deploy/docker/build.sh [BINARY]     (default: target/release/gantry, built if missing)
#
# The image tag is $GANTRY_IMAGE (default gantry:latest). The binary is
# dynamically linked against glibc; its libraries and loader are copied in
# beside it, so the image runs on any x86_64 Docker host.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
image="${GANTRY_IMAGE:-gantry:latest}"
binary="${1:-$root/target/release/gantry}"
if [[ ! -x "$binary" ]]; then
    echo "== building $binary"
    (cd "$root" && cargo build --release -p gantry-cli)
fi

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs/usr/local/bin" "$ctx/rootfs/etc" "$ctx/rootfs/tmp" "$ctx/data"
chmod 1777 "$ctx/rootfs/tmp"
# Debug info is of no use in the image and is most of a debug build's size.
objcopy --strip-debug "$binary" "$ctx/rootfs/usr/local/bin/gantry"
# The libraries the binary links, and the dynamic loader, at their own paths.
ldd "$binary" | grep -o '/[^ ]*' | sort -u | while read -r lib; do
    cp --parents -L "$lib" "$ctx/rootfs/"
done
echo 'root:x:0:0:root:/:/nonexistent' > "$ctx/rootfs/etc/passwd"
echo 'gantry:x:65532:65532:gantry:/var/lib/gantry:/nonexistent' >> "$ctx/rootfs/etc/passwd"
printf 'root:x:0:\ngantry:x:65532:\n' > "$ctx/rootfs/etc/group"
echo 'hosts: files dns' > "$ctx/rootfs/etc/nsswitch.conf"
cp "$here/Dockerfile" "$ctx/Dockerfile"
docker build --quiet -t "$image" "$ctx" >/dev/null
echo "built $image ($(docker image inspect -f '{{.Size}}' "$image") bytes)"
