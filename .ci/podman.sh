#!/usr/bin/env bash
# podman.sh - make Debian 13's rootless podman 5 available on Debian 12 for
# the podman drop-in test (internal/e2e/podman), without installing it.
#
# What it does (idempotent, run as root):
#   1. installs from bookworm: uidmap (newuidmap/newgidmap, setuid),
#      patchelf and busybox-static (the container image's userland);
#   2. adds a trixie apt source pinned to priority 100
#      (/etc/apt/sources.list.d/trixie.list, /etc/apt/preferences.d/trixie,
#      the same files as bench/reference-trixie.sh), so that nothing
#      installed or upgraded resolves to trixie, and checks the pin holds;
#   3. apt-get downloads podman, crun, conmon, catatonit and, level by
#      level, every "lib*" package they depend on (libc6 among them), all
#      from trixie, plus golang-github-containers-common (seccomp.json);
#      no netavark or aardvark-dns: pasta networking only;
#   4. dpkg-deb -x's them into a staging tree that replaces $PREFIX
#      (/opt/podman-trixie), and patchelf's every dynamic executable there
#      to trixie's ld.so with a DT_RPATH (transitive, unlike DT_RUNPATH) to
#      the tree's library directories;
#   5. checks with trixie's ld.so that every library resolves inside the
#      tree, and that podman --version is 5.x;
#   6. creates the unprivileged user $PODMAN_USER (gopasst-podman) with
#      subordinate uid and gid ranges for rootless podman.
# On success it writes $PREFIX/READY (key=value lines the test reads) and
# removes $PREFIX.unavailable. When something cannot be done (not root, not
# amd64, no apt-get, trixie unreachable, ...) it writes the reason to
# $PREFIX.unavailable, prints it and exits 0, so that the test skips with
# that reason. A second run with everything in place takes well under a
# second (FORCE=1 redoes everything).
set -euo pipefail

PREFIX=${PREFIX:-/opt/podman-trixie}
PODMAN_USER=${PODMAN_USER:-gopasst-podman}
STAMP=podman-sh-v1 # bump when the tree's layout or contents change
MARKER=$PREFIX.unavailable
INTERP_REL=usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
TOP=(podman crun conmon catatonit)

log() { echo "podman.sh: $*" >&2; }
unavailable() {
	log "unavailable: $*"
	mkdir -p "$(dirname "$MARKER")" 2>/dev/null || true
	printf '%s\n' "$*" >"$MARKER" 2>/dev/null || true
	exit 0
}

[ "$(id -u)" -eq 0 ] || unavailable "needs root to install uidmap and create $PODMAN_USER (run: sudo bash $0)"
command -v apt-get >/dev/null || unavailable "no apt-get: not a Debian machine"
[ "$(dpkg --print-architecture)" = amd64 ] || unavailable "only amd64 is supported (found $(dpkg --print-architecture))"

have() { dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null | grep -qx installed; }

user_ok() {
	id "$PODMAN_USER" >/dev/null 2>&1 &&
		grep -q "^$PODMAN_USER:" /etc/subuid 2>/dev/null &&
		grep -q "^$PODMAN_USER:" /etc/subgid 2>/dev/null
}

# --- fast path ----------------------------------------------------------------
if [ "${FORCE:-0}" != 1 ] && [ -f "$PREFIX/READY" ] && grep -qx "stamp=$STAMP" "$PREFIX/READY" &&
	have uidmap && have patchelf && have busybox-static && user_ok; then
	rm -f "$MARKER"
	log "ready: $(grep '^podman_version=' "$PREFIX/READY" | cut -d= -f2-) in $PREFIX (FORCE=1 to redo)"
	exit 0
fi

export DEBIAN_FRONTEND=noninteractive

# --- 1. bookworm tools ----------------------------------------------------------
missing=()
for p in uidmap patchelf busybox-static; do have "$p" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
	log "installing ${missing[*]} (bookworm)"
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
		{ apt-get update -qq >/dev/null 2>&1 || true; apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; } ||
		unavailable "apt-get install ${missing[*]} failed"
fi

# --- 2. trixie source with a low pin ------------------------------------------
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
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
opts=""
[ -r "$keyring" ] && opts="[signed-by=$keyring] "
want_list=$(printf 'deb %s%s trixie main' "$opts" "$mirror")
need_update=0
if [ "$(cat /etc/apt/sources.list.d/trixie.list 2>/dev/null)" != "$want_list" ]; then
	printf '%s\n' "$want_list" >/etc/apt/sources.list.d/trixie.list
	need_update=1
fi
want_pin='# Only for fetching Debian 13 packages to unpack privately (bench/reference-trixie.sh,
# .ci/podman.sh); everything else keeps resolving to bookworm.
Package: *
Pin: release n=trixie
Pin-Priority: 100'
if [ "$(cat /etc/apt/preferences.d/trixie 2>/dev/null)" != "$want_pin" ]; then
	printf '%s\n' "$want_pin" >/etc/apt/preferences.d/trixie
fi
# apt-get update only when trixie's package list is missing or the source new.
if [ "$need_update" = 1 ] || ! apt-cache show podman/trixie >/dev/null 2>&1; then
	log "apt-get update (trixie source: $mirror)"
	apt-get update -qq >/dev/null 2>&1 || true
fi
apt-cache show podman/trixie >/dev/null 2>&1 || unavailable "podman/trixie not found: is $mirror trixie reachable?"
cand=$(apt-cache policy libc6 | sed -n 's/^ *Candidate: //p')
case $cand in
*deb13* | 2.4[0-9]*) unavailable "trixie pin not effective: libc6 candidate is $cand" ;;
esac
cand=$(apt-cache policy podman | sed -n 's/^ *Candidate: //p')
case $cand in
5.*) unavailable "trixie pin not effective: podman candidate is $cand" ;;
esac

# --- 3. download ---------------------------------------------------------------
scratch=$(mktemp -d /tmp/podman-trixie.XXXXXX)
stage=""
cleanup() { rm -rf "$scratch" ${stage:+"$stage"}; }
trap cleanup EXIT
chmod 755 "$scratch" # apt's _apt user writes the downloads
cd "$scratch"

download() {
	apt-get download -q "${@/%//trixie}" >/dev/null 2>&1 || apt-get download -q "${@/%//trixie}" >&2
}
# Breadth-first over the lib* dependencies (first alternative of each),
# reading Depends from the downloaded .debs (fast, unlike apt-cache show).
declare -A seen=()
level=("${TOP[@]}" golang-github-containers-common)
while [ ${#level[@]} -gt 0 ]; do
	for p in "${level[@]}"; do seen[$p]=1; done
	download "${level[@]}" || unavailable "apt-get download ${level[*]} (trixie) failed"
	next=()
	for p in "${level[@]}"; do
		deb=$(ls "${p}"_*.deb 2>/dev/null | head -n1)
		[ -n "$deb" ] || unavailable "no .deb for $p after apt-get download"
		[ "$p" = golang-github-containers-common ] && continue # config only
		for d in $({
			dpkg-deb -f "$deb" Pre-Depends
			echo ,
			dpkg-deb -f "$deb" Depends
		} | tr ',' '\n' | sed -E 's/\|.*//; s/\(.*//; s/:any//; s/[[:space:]]//g' | grep '^lib' || true); do
			[ -n "${seen[$d]:-}" ] && continue
			seen[$d]=1
			next+=("$d")
		done
	done
	level=("${next[@]}")
done
log "downloaded $(ls ./*.deb | wc -l) packages from trixie: $(echo "${!seen[@]}" | tr ' ' '\n' | sort | tr '\n' ' ')"

# --- 4. extract and patch --------------------------------------------------------
mkdir -p "$(dirname "$PREFIX")"
stage=$(mktemp -d "$PREFIX.stage.XXXXXX")
for deb in ./*.deb; do dpkg-deb -x "$deb" "$stage"; done
[ -f "$stage/$INTERP_REL" ] || unavailable "no ld.so at $INTERP_REL in trixie's libc6"
INTERP=$PREFIX/$INTERP_REL
rpath=$PREFIX/usr/lib/x86_64-linux-gnu:$PREFIX/lib/x86_64-linux-gnu
is_exec() { # dynamic ELF executable (has an interpreter)
	patchelf --print-interpreter "$1" >/dev/null 2>&1
}
execs=()
while IFS= read -r -d '' f; do
	case $f in "$stage"/usr/lib/x86_64-linux-gnu/*.so* | "$stage"/lib/x86_64-linux-gnu/*.so*) continue ;; esac
	is_exec "$f" || continue
	patchelf --set-interpreter "$INTERP" --force-rpath --set-rpath "$rpath" "$f"
	execs+=("${f#"$stage"/}")
done < <(find "$stage/usr/bin" "$stage/usr/sbin" "$stage/usr/libexec" "$stage/usr/lib/podman" -type f -print0 2>/dev/null)
[ -x "$stage/usr/bin/podman" ] || unavailable "no usr/bin/podman in podman/trixie"
[ -x "$stage/usr/bin/crun" ] || unavailable "no usr/bin/crun in crun/trixie"
[ -x "$stage/usr/bin/conmon" ] || unavailable "no usr/bin/conmon in conmon/trixie"
chmod 755 "$stage"
chmod -R a+rX,go-w "$stage"
rm -rf "$PREFIX"
mv "$stage" "$PREFIX"
stage=""

# --- 5. verify ---------------------------------------------------------------------
for f in "${execs[@]}"; do
	out=$("$INTERP" --list "$PREFIX/$f" 2>&1) || unavailable "$f does not load: $out"
	if printf '%s\n' "$out" | grep -E 'not found|=> /' | grep -v "=> $PREFIX/" >/dev/null; then
		log "$out"
		unavailable "$f resolves libraries outside $PREFIX (a dependency is missing from the tree)"
	fi
done
pv=$("$PREFIX/usr/bin/podman" --version 2>&1 | awk '{print $NF; exit}')
case $pv in
5.*) ;;
*) unavailable "unexpected podman version: $pv" ;;
esac
cv=$("$PREFIX/usr/bin/crun" --version 2>&1 | awk '/^crun version/{print $3; exit}')
mv_=$("$PREFIX/usr/bin/conmon" --version 2>&1 | awk '/version/{print $3; exit}')
catatonit=""
for c in usr/libexec/podman/catatonit usr/bin/catatonit; do
	[ -x "$PREFIX/$c" ] && { catatonit=$PREFIX/$c; break; }
done

# --- 6. the rootless user --------------------------------------------------------------
if ! id "$PODMAN_USER" >/dev/null 2>&1; then
	useradd --system --create-home --home-dir "/home/$PODMAN_USER" --shell /usr/sbin/nologin "$PODMAN_USER" ||
		unavailable "useradd $PODMAN_USER failed"
fi
# A free range above every range already handed out.
next_range() {
	awk -F: 'BEGIN{m=200000} NF>=3{e=$2+$3; if (e>m) m=e} END{print m}' "$1" 2>/dev/null || echo 200000
}
for f in /etc/subuid /etc/subgid; do
	touch "$f"
	grep -q "^$PODMAN_USER:" "$f" || printf '%s:%s:65536\n' "$PODMAN_USER" "$(next_range "$f")" >>"$f"
done
user_ok || unavailable "$PODMAN_USER has no subordinate id ranges"

cat >"$PREFIX/READY" <<EOF
stamp=$STAMP
prefix=$PREFIX
podman=$PREFIX/usr/bin/podman
crun=$PREFIX/usr/bin/crun
conmon=$PREFIX/usr/bin/conmon
catatonit=$catatonit
seccomp=$PREFIX/usr/share/containers/seccomp.json
podman_version=$pv
crun_version=$cv
conmon_version=$mv_
user=$PODMAN_USER
uid=$(id -u "$PODMAN_USER")
gid=$(id -g "$PODMAN_USER")
busybox=$(command -v busybox || echo /bin/busybox)
EOF
chmod 644 "$PREFIX/READY"
rm -f "$MARKER"
log "ready: podman $pv, crun $cv, conmon $mv_ in $PREFIX; user $PODMAN_USER"
