#!/usr/bin/env bash
# A UDP round trip through a new network namespace: builds gopasst and the
# udptool test program, starts echo servers on the host's loopback, and runs
# udptool inside "gopasst pasta": the namespace sends to its gateway
# address, which gopasst maps to the host's loopback, and gets the echoes
# back. The namespace uses documentation addresses (192.0.2.0/24,
# 2001:db8::/64), so nothing leaves this machine. Works as root or as a user
# who may open /dev/net/tun.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p bin
go build -o bin/gopasst ./cmd/gopasst
go build -o bin/udptool ./internal/e2e/udptool

bin/udptool echo -l 127.0.0.1:5000 -timeout 10s >/dev/null & echo4=$!
bin/udptool echo -l '[::1]:5000' -timeout 10s >/dev/null & echo6=$!
trap 'kill $echo4 $echo6 2>/dev/null' EXIT
sleep 0.2

bin/gopasst pasta --config-net \
	-a 192.0.2.2/24 -g 192.0.2.1 -a 2001:db8::2 -g 2001:db8::1 \
	-- sh -c '
		echo "inside the namespace:"; ip -br addr show scope global
		bin/udptool send -to 192.0.2.1:5000 -size 1372 -count 3 -echo -connect
		bin/udptool send -to "[2001:db8::1]:5000" -size 65000 -count 3 -echo -connect'
