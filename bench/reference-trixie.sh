#!/usr/bin/env bash
# reference-trixie.sh - install the Debian 13 ("trixie", 2025) pasta/passt as a
# private, self-contained copy under /opt/passt-trixie, next to the system's
# Debian 12 passt (which stays as /usr/bin/pasta and /usr/bin/passt).
#
# Why: Debian 12's passt (0.0~git20230309) predates the use of SO_PEEK_OFF for
# TCP sockets that Linux 6.9 made available, and on this kernel it corrupts
# TCP data sent to the guest. The TCP comparison in bench/ therefore needs the
# 2025 reference (0.0~git20250503), without replacing the system package.
#
# What it does (idempotent; run as root: `sudo bash bench/reference-trixie.sh`):
#   1. adds a trixie apt source (same mirror host as the existing Debian source)
#      in /etc/apt/sources.list.d/trixie.list, pinned to priority 100 in
#      /etc/apt/preferences.d/trixie, so everything else keeps resolving to
#      bookworm; runs apt-get update and checks that the pin holds;
#   2. installs patchelf (from bookworm);
#   3. apt-get downloads passt/trixie and libc6/trixie (passt's only library
#      dependency; checked with dpkg-deb -I and ldd) into a scratch dir and
#      dpkg-deb -x's them into a staging tree that replaces /opt/passt-trixie;
#   4. patchelf's every ELF in usr/bin to use the trixie ld.so and libc
#      (interpreter + rpath inside /opt/passt-trixie). Note: passt re-execs
#      itself as "<argv0 path>.avx2" on AVX2 CPUs, so passt.avx2 is patched too,
#      and pasta / pasta.avx2 stay hard links (the binary picks its mode from
#      argv[0]);
#   5. makes the tree world-readable (passt refuses to run as root, so the
#      unprivileged user running it must be able to read/exec it);
#   6. verifies: pasta --version; and, if the user gopasst-test exists,
#      `pasta --config-net` as that user plus a TCP fetch from inside the
#      namespace to a python3 http.server on the host's 127.0.0.1 through the
#      gateway address (which pasta maps to the host's loopback).
#      Set VERIFY=0 to skip the namespace/TCP checks.
# Prints the pasta path at the end.
set -euo pipefail

PREFIX=/opt/passt-trixie
TEST_USER=${TEST_USER:-gopasst-test}
VERIFY=${VERIFY:-1}
PORT=${PORT:-8765}
LIBDIR=$PREFIX/usr/lib/x86_64-linux-gnu
INTERP=$LIBDIR/ld-linux-x86-64.so.2

log() { echo "reference-trixie: $*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (sudo bash $0)"
[ "$(dpkg --print-architecture)" = amd64 ] || die "only amd64 is supported"

# --- 1. trixie apt source with a low pin ------------------------------------
# Use the host of the existing Debian (non-security) source, e.g. deb.debian.org.
mirror=$(
	{
		grep -hsE '^[[:space:]]*URIs:' /etc/apt/sources.list.d/*.sources |
			sed -E 's/^[[:space:]]*URIs:[[:space:]]*//' | tr ' ' '\n'
		grep -hsE '^[[:space:]]*deb[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
			sed -E 's/\[[^]]*\]//; s/^[[:space:]]*deb[[:space:]]+//; s/[[:space:]].*//'
	} | grep -E '^https?://[^/]+/debian/?$' | head -n1 || true
)
mirror=${mirror%/}
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian
log "mirror: $mirror"

keyring=/usr/share/keyrings/debian-archive-keyring.gpg
opts=""
[ -r "$keyring" ] && opts="[signed-by=$keyring] "
printf 'deb %s%s trixie main\n' "$opts" "$mirror" >/etc/apt/sources.list.d/trixie.list
cat >/etc/apt/preferences.d/trixie <<'EOF'
# Only for fetching the trixie passt reference (bench/reference-trixie.sh);
# everything else keeps resolving to bookworm.
Package: *
Pin: release n=trixie
Pin-Priority: 100
EOF

apt-get update -q >/dev/null

# The pin must keep plain installs on bookworm.
cand=$(apt-cache policy libc6 | sed -n 's/^ *Candidate: //p')
case $cand in
*deb13* | 2.4[0-9]*) die "pin not effective: libc6 candidate is $cand" ;;
esac
cand=$(apt-cache policy passt | sed -n 's/^ *Candidate: //p')
case $cand in
*2025* | *deb13*) die "pin not effective: passt candidate is $cand" ;;
esac

# --- 2. patchelf ------------------------------------------------------------
command -v patchelf >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q patchelf >/dev/null

# --- 3. download and extract ------------------------------------------------
scratch=$(mktemp -d /tmp/reference-trixie.XXXXXX)
stage=""
cleanup() { rm -rf "$scratch" ${stage:+"$stage"}; }
trap cleanup EXIT
chmod 755 "$scratch" # so apt's _apt user can write downloads there
cd "$scratch"
apt-get download -q passt/trixie libc6/trixie >/dev/null 2>&1 ||
	apt-get download passt/trixie libc6/trixie
passt_deb=$(ls passt_*.deb)
libc_deb=$(ls libc6_*.deb)
deps=$(dpkg-deb -f "$passt_deb" Depends)
log "$passt_deb depends: $deps"
# Anything besides libc6 would have to be downloaded and extracted as well.
extra=$(printf '%s\n' "$deps" | tr ',' '\n' | sed -E 's/\(.*//; s/[[:space:]]//g' | grep -v '^libc6$' | grep -v '^$' || true)
[ -z "$extra" ] || die "passt needs more than libc6 now: $extra"

stage=$(mktemp -d "$PREFIX.stage.XXXXXX")
dpkg-deb -x "$libc_deb" "$stage"
dpkg-deb -x "$passt_deb" "$stage"

# --- 4. point the binaries at the private ld.so / libc ----------------------
s_interp=$stage${INTERP#"$PREFIX"}
[ -f "$s_interp" ] || die "no ld.so at $s_interp"
for f in "$stage"/usr/bin/*; do
	[ -f "$f" ] && [ ! -L "$f" ] || continue
	patchelf --print-interpreter "$f" >/dev/null 2>&1 || continue # not dynamic ELF
	patchelf --set-interpreter "$INTERP" --set-rpath "$LIBDIR" "$f"
done
# pasta must exist under that name (mode is chosen from argv[0]); keep it (and
# pasta.avx2, used via the AVX2 re-exec) hard-linked to the patched binary.
ln -f "$stage/usr/bin/passt" "$stage/usr/bin/pasta"
[ ! -e "$stage/usr/bin/passt.avx2" ] || ln -f "$stage/usr/bin/passt.avx2" "$stage/usr/bin/pasta.avx2"

# --- 5. permissions, install ------------------------------------------------
chmod 755 "$stage"
chmod -R a+rX,go-w "$stage"
rm -rf "$PREFIX"
mv "$stage" "$PREFIX"
stage=""
PASTA=$PREFIX/usr/bin/pasta

# --- 6. verify ----------------------------------------------------------------
for b in passt pasta passt.avx2 pasta.avx2; do
	[ -e "$PREFIX/usr/bin/$b" ] || continue
	if "$INTERP" --list "$PREFIX/usr/bin/$b" | grep -E 'not found|=> /' | grep -v "=> $PREFIX/" >/dev/null; then
		"$INTERP" --list "$PREFIX/usr/bin/$b" >&2
		die "$b resolves libraries outside $PREFIX"
	fi
done
# This passt exits without flushing stdio, so "--version" prints nothing when
# stdout is a pipe or file (only on a tty); stdbuf -o0 makes it unbuffered.
version=$(stdbuf -o0 "$PASTA" --version | head -n1)
log "version: $version"
case $version in
*2025*) ;;
*) die "unexpected version: $version" ;;
esac
[ "$(stdbuf -o0 /usr/bin/pasta --version | head -n1)" != "$version" ] || die "/usr/bin/pasta was replaced"

if [ "$VERIFY" = 1 ] && id "$TEST_USER" >/dev/null 2>&1; then
	log "checking pasta --config-net as $TEST_USER"
	su -s /bin/sh "$TEST_USER" -c "$PASTA --config-net -- sh -c 'ip addr; ip route'" >&2

	gw=$(ip -4 route show default | awk '{print $3; exit}')
	url=http://$gw:$PORT/
	if command -v curl >/dev/null; then
		fetch="curl -fsS --max-time 10 $url"
	elif command -v wget >/dev/null; then
		fetch="wget -q -T 10 -O - $url"
	else
		fetch="/usr/bin/python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(\"$url\", timeout=10).read().decode())'"
	fi
	if [ -n "$gw" ]; then
		srvdir=$(mktemp -d /tmp/reference-trixie-www.XXXXXX)
		echo "reference-trixie-ok" >"$srvdir/index.html"
		printf '%s\n' "$fetch" >"$srvdir/fetch.sh"
		chmod -R a+rX "$srvdir"
		/usr/bin/python3 -m http.server "$PORT" --bind 127.0.0.1 --directory "$srvdir" >/dev/null 2>&1 &
		srv=$!
		trap 'kill "$srv" 2>/dev/null || true; wait "$srv" 2>/dev/null || true; rm -rf "$srvdir"; cleanup' EXIT
		for _ in $(seq 50); do
			/usr/bin/python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1)" 2>/dev/null && break
			sleep 0.1
		done
		log "TCP check: $fetch (inside pasta, gateway $gw -> host loopback)"
		out=$(su -s /bin/sh "$TEST_USER" -c "$PASTA --config-net -- sh $srvdir/fetch.sh")
		kill "$srv" 2>/dev/null || true
		wait "$srv" 2>/dev/null || true
		[ "$out" = "reference-trixie-ok" ] || die "TCP check failed, got: $out"
		log "TCP check ok"
	else
		log "no default route; skipping TCP check"
	fi
fi

echo "$PASTA"
