#!/usr/bin/env bash
# hack/images-import.sh SOCKET OUTDIR: imports every image that hack/images.sh listed in
# OUTDIR/images.txt into the containerd at SOCKET (namespace k8s.io, where the kubelet's CRI
# looks), with ctr from ${PORTICO_BIN_DIR:-~/.cache/portico/bin}. Pods then use the images with
# `imagePullPolicy: Never` (or IfNotPresent): nothing is pulled.
set -euo pipefail

die() { echo "images-import.sh: $*" >&2; exit 1; }

[ $# -eq 2 ] || die "usage: $0 SOCKET OUTDIR"
SOCKET=$1
OUTDIR=$2
BIN_DIR=${PORTICO_BIN_DIR:-$HOME/.cache/portico/bin}
CTR="$BIN_DIR/ctr"

[ -x "$CTR" ] || die "$CTR is missing (hack/k8s-bins.sh builds it; or set PORTICO_BIN_DIR)"
[ -S "$SOCKET" ] || die "$SOCKET is not a socket: is containerd running?"
LIST="$OUTDIR/images.txt"
[ -f "$LIST" ] || die "$LIST is missing: run hack/images.sh $OUTDIR PROFILE first"

# Check the whole list before importing anything.
tarballs=()
refs=()
while read -r tarball ref rest; do
	[ -n "$tarball" ] || continue
	if [ -z "$ref" ] || [ -n "$rest" ]; then die "$LIST: bad line '$tarball $ref $rest'"; fi
	case $tarball in
	/*) ;;
	*) tarball="$OUTDIR/$tarball" ;;
	esac
	[ -f "$tarball" ] || die "$tarball ($ref) is missing: run hack/images.sh $OUTDIR PROFILE again"
	tarballs+=("$tarball")
	refs+=("$ref")
done <"$LIST"
[ ${#tarballs[@]} -gt 0 ] || die "$LIST lists no images"

for i in "${!tarballs[@]}"; do
	echo "images-import.sh: ${refs[$i]} <- ${tarballs[$i]}" >&2
	"$CTR" --address "$SOCKET" -n k8s.io images import --all-platforms "${tarballs[$i]}" >/dev/null ||
		die "importing ${tarballs[$i]} (${refs[$i]}) into $SOCKET failed"
	"$CTR" --address "$SOCKET" -n k8s.io images ls -q "name==${refs[$i]}" | grep -qxF "${refs[$i]}" ||
		die "${refs[$i]} is not in containerd after importing ${tarballs[$i]}"
done
