#!/bin/sh
# Node batch of the WireGuard mesh, rootless: no root, no TUN.
cd "$(dirname "$0")" || exit 1
exec python -m wireguard forward wg-mesh.conf -L 5432:10.77.0.1:5432
