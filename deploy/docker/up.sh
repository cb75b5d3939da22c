#!/usr/bin/env bash
# Builds the image and brings up 3 replicas + 2 agents with fresh certificates.
#
#   deploy/docker/up.sh [BINARY]
#
# Certificates go to $GANTRY_CERTS (default deploy/docker/certs; kept if it
# already holds a CA). The compose project is $COMPOSE_PROJECT_NAME (default
# gantry). Afterwards:
#   docker-compose -f deploy/docker/compose.yaml port gantry-1 7001
#   gantry job run --servers 127.0.0.1:PORT --ca $GANTRY_CERTS/ca.pem \
#       --cert $GANTRY_CERTS/client-admin.pem --key $GANTRY_CERTS/client-admin-key.pem -- /usr/local/bin/gantry --version
# and to stop it (volumes too): docker-compose -f deploy/docker/compose.yaml down -v
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
binary="${1:-$root/target/release/gantry}"
"$here/build.sh" "$binary"
export GANTRY_CERTS="${GANTRY_CERTS:-$here/certs}"
if [[ ! -f "$GANTRY_CERTS/ca.pem" ]]; then
    "$binary" certs init --dir "$GANTRY_CERTS" \
        --server 1=gantry-1 --server 2=gantry-2 --server 3=gantry-3 \
        --agent agent-1 --agent agent-2 >/dev/null
fi
# The containers run as uid 65532: their keys must be readable by it. The CA
# key stays readable by its owner only (and belongs offline in production).
chmod 0755 "$GANTRY_CERTS"
find "$GANTRY_CERTS" -name '*.pem' ! -name 'ca-key.pem' -exec chmod 0644 {} +
docker-compose -f "$here/compose.yaml" up -d
echo "replicas published at:"
for r in gantry-1 gantry-2 gantry-3; do
    echo "  $r $(docker-compose -f "$here/compose.yaml" port "$r" 7001)"
done
