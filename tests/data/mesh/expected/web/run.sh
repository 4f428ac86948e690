#!/bin/sh
# Node web of the WireGuard mesh, rootless: no root, no TUN.
cd "$(dirname "$0")" || exit 1
exec python -m wireguard proxy wg-mesh.conf --socks5 127.0.0.1:1080 --http 127.0.0.1:8080 --metrics 0.0.0.0:9586
