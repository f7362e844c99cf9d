#!/usr/bin/env bash
# hack/images.sh OUTDIR PROFILE: Portico's container images as OCI image-layout tarballs, made
# with tar, gzip, sha256sum and hand-written JSON (no container engine, no registry).
#
#   PROFILE   debug or release: the binaries come from ${CARGO_TARGET_DIR:-target}/PROFILE/
#             (portico-operator, portico-proxy, portico-echo). Build them first; this script
#             does not run cargo.
#   OUTDIR    gets one single-layer image per tarball (pause.tar, portico-operator.tar,
#             portico-proxy.tar, echo.tar, nginx.tar) and images.txt, one line per image:
#             `<tarball path> <full reference>`. Import them with hack/images-import.sh.
#
# hack/images.sh OUTDIR binary BINARY USER REF...: instead, one image per REF holding just
# BINARY (at /<its name>, the entrypoint, run as USER; empty for root), in OUTDIR/<name>-<tag>.tar,
# listed in OUTDIR/images.txt the same way. For other projects' test servers built from Go
# modules under the references their manifests name (the Gateway API conformance suite's
# echo-basic: hack/conformance.sh).
#
# Each root filesystem is the binary plus its `ldd` dependencies copied to the same paths (the
# host's /lib -> usr/lib style symlinks and the loader's symlink included), a minimal
# /etc/passwd, /etc/group and /etc/nsswitch.conf, and /tmp (1777). The output is reproducible:
# sorted tar entries, fixed mtimes (SOURCE_DATE_EPOCH, default 0), owner 0:0, `gzip -n`. An
# image whose inputs (files, their sha256, its settings, this script) did not change since the
# last run is not rebuilt.
#
# Environment: IMAGE_TAG (default: appVersion in charts/portico/Chart.yaml) for the operator
# and proxy images, CARGO_TARGET_DIR, SOURCE_DATE_EPOCH, K8S_VERSION (the Go module
# k8s.io/kubernetes whose build/pause/linux/pause.c is compiled; default v1.36.3).
# Needs: bash, GNU tar, gzip, coreutils, ldd, gcc with a static libc (libc6-dev), go (only
# when the pause binary is not cached yet), Debian's iptables, busybox-static and nginx.
set -euo pipefail
umask 022
export LC_ALL=C

die() { echo "images.sh: $*" >&2; exit 1; }
log() { echo "images.sh: $*" >&2; }

USAGE="usage: $0 OUTDIR debug|release, or $0 OUTDIR binary BINARY USER REF..."
[ $# -ge 2 ] || die "$USAGE"
OUTDIR=$1
PROFILE=$2
case $PROFILE in
debug | release) [ $# -eq 2 ] || die "$USAGE" ;;
binary) [ $# -ge 5 ] || die "$USAGE" ;;
*) die "PROFILE must be debug, release or binary, not '$PROFILE'" ;;
esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF="$ROOT/hack/images.sh"
# Like cargo: a relative CARGO_TARGET_DIR is relative to the current directory, the default
# is the workspace's target/.
BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE"
EPOCH=${SOURCE_DATE_EPOCH:-0}
K8S_VERSION=${K8S_VERSION:-v1.36.3}
if [ -z "${IMAGE_TAG:-}" ]; then
	IMAGE_TAG=$(sed -n 's/^appVersion:[[:space:]]*"\{0,1\}\([^"[:space:]]*\)"\{0,1\}[[:space:]]*$/\1/p' \
		"$ROOT/charts/portico/Chart.yaml")
	[ -n "$IMAGE_TAG" ] || die "no appVersion in charts/portico/Chart.yaml (set IMAGE_TAG)"
fi
DEFAULT_PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
XTABLES_DIR=/usr/lib/x86_64-linux-gnu/xtables

for tool in tar gzip sha256sum ldd readlink realpath find sort stat; do
	command -v "$tool" >/dev/null || die "$tool is missing"
done
[ "$(uname -m)" = x86_64 ] || die "the images are linux/amd64: run this on x86_64"

mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
WORK=$(mktemp -d "$OUTDIR/.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
trap 'exit 1' INT TERM HUP
SELF_SHA=$(sha256sum <"$SELF" | cut -d' ' -f1)

# ---------------------------------------------------------------------------------------------
# The root filesystem of the image being described, as entries keyed by absolute path:
#   "F MODE SRC" a regular file copied from SRC, "L TARGET" a symlink, "D MODE" a directory.

declare -A ENTRY=() HOST_SEEN=()

add_entry() { # PATH VALUE
	local old=${ENTRY[$1]:-}
	if [ -n "$old" ] && [ "$old" != "$2" ]; then
		die "$1: wanted as '$2' and as '$old'"
	fi
	ENTRY[$1]=$2
}

add_file() { # DEST SRC [MODE]
	[ -f "$2" ] || die "$2: no such file"
	add_entry "$1" "F ${3:-$(stat -L -c %a "$2")} $2"
}

add_link() { add_entry "$1" "L $2"; } # DEST TARGET
add_dir() { add_entry "$1" "D $2"; }  # DEST MODE

# add_host_path PATH: the host's PATH at the same place, with every symlink met on the way
# (a component such as /lib -> usr/lib, or the file itself) recreated as the same symlink and
# followed, so the real file lands at its real path and every name for it resolves.
add_host_path() {
	local path=$1 depth=${2:-0} prefix="" rest comp link target
	[ -z "${HOST_SEEN[$path]:-}" ] || return 0
	HOST_SEEN[$path]=1
	[ "$depth" -lt 40 ] || die "$1: too many levels of symbolic links"
	case $path in
	/*) ;;
	*) die "$path: not an absolute path" ;;
	esac
	case $path in
	*/./* | */../* | */. | */..) path=$(realpath -m -s "$path") ;;
	esac
	rest=${path#/}
	while [ -n "$rest" ]; do
		comp=${rest%%/*}
		if [ "$comp" = "$rest" ]; then rest=""; else rest=${rest#*/}; fi
		[ -n "$comp" ] || continue
		if [ -L "$prefix/$comp" ]; then
			link=$(readlink "$prefix/$comp")
			add_link "$prefix/$comp" "$link"
			case $link in
			/*) target=$link ;;
			*) target="$prefix/$link" ;;
			esac
			add_host_path "$target${rest:+/$rest}" $((depth + 1))
			return
		fi
		prefix="$prefix/$comp"
	done
	if [ -d "$prefix" ]; then
		add_dir "$prefix" "$(stat -c %a "$prefix")"
	elif [ -f "$prefix" ]; then
		add_file "$prefix" "$prefix"
	else
		die "$path: not found on this machine"
	fi
}

# add_ldd_deps FILE...: the shared libraries (and the loader) the files need, from ldd.
add_ldd_deps() {
	local out line dep
	# ldd fails for a static binary; its output says so, and "not found" is checked below.
	out=$(ldd "$@" 2>&1) || true
	if grep -q 'not found' <<<"$out"; then
		die "missing shared libraries: $(grep 'not found' <<<"$out" | tr -s '\t\n' '  ')"
	fi
	while IFS= read -r line; do
		# Dependencies are the tab-indented lines: "libc.so.6 => /lib/.../libc.so.6 (0x...)",
		# "/lib64/ld-linux-x86-64.so.2 (0x...)", "linux-vdso.so.1 (0x...)" (in the kernel).
		case $line in $'\t'*) ;; *) continue ;; esac
		dep=""
		case $line in
		*' => /'*) dep=${line#*=> } ;;
		*'=>'*) ;;
		$'\t'/*) dep=${line#$'\t'} ;;
		esac
		dep=${dep%% (*}
		[ -z "$dep" ] || add_host_path "$dep"
	done <<<"$out"
}

# add_binary SRC DEST: an executable at DEST and its libraries.
add_binary() {
	add_file "$2" "$1" 755
	add_ldd_deps "$1"
}

# add_text DEST MODE: a generated file with stdin as its content.
add_text() {
	local f
	f="$WORK/gen/$CUR/$1"
	mkdir -p "$(dirname "$f")"
	cat >"$f"
	add_file "$1" "$f" "$2"
}

add_base() {
	add_text /etc/passwd 644 <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
portico-proxy:x:2102:2102:portico-proxy:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
EOF
	# nogroup: the Debian name of 65534, nginx's default group when it starts as root.
	add_text /etc/group 644 <<'EOF'
root:x:0:
portico-proxy:x:2102:
nonroot:x:65532:
nobody:x:65534:
nogroup:x:65534:
EOF
	add_text /etc/nsswitch.conf 644 <<'EOF'
passwd: files
group: files
hosts: files dns
protocols: files
services: files
EOF
	add_dir /tmp 1777
}

# ---------------------------------------------------------------------------------------------
# Writing an image.

json_str() { # a JSON string literal
	local s=$1
	s=${s//\\/\\\\}
	s=${s//\"/\\\"}
	printf '"%s"' "$s"
}

json_list() { # a JSON array of strings
	local out="" x
	for x in "$@"; do out+="${out:+,}$(json_str "$x")"; done
	printf '[%s]' "$out"
}

sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

# Reproducible tar of DIR's contents, entries sorted, without the "./" prefix.
tar_dir() { # DIR OUT
	(cd "$1" && find . -mindepth 1 -printf '%P\n' | sort) >"$WORK/tarlist"
	tar -C "$1" --format=gnu --numeric-owner --owner=0 --group=0 --mtime="@$EPOCH" \
		--no-recursion --no-xattrs --no-acls --no-selinux -T "$WORK/tarlist" -cf "$2"
}

IMAGES=()

# write_image NAME REFERENCE: turns ENTRY plus the settings below into OUTDIR/NAME.tar,
# unless the stamp says that exact input was written already.
#   USER_ (config.User, may be empty), ENV_ (array), ENTRYPOINT_ (array)
write_image() {
	local name=$1 ref=$2 tag=${2##*:} tarball="$OUTDIR/$1.tar" stamp="$OUTDIR/.$1.stamp"
	local cfg_env cfg_user spec inputs key
	IMAGES+=("$tarball $ref")

	cfg_env=$(json_list "${ENV_[@]}")
	cfg_user=""
	[ -z "$USER_" ] || cfg_user="\"User\":$(json_str "$USER_"),"

	# What goes in: the sorted entries with every source's sha256, the settings, this script.
	spec=$(for k in "${!ENTRY[@]}"; do printf '%s %s\n' "$k" "${ENTRY[$k]}"; done | sort)
	inputs=$({
		echo "script $SELF_SHA"
		echo "ref $ref epoch $EPOCH"
		echo "user $USER_ env $cfg_env entrypoint $(json_list "${ENTRYPOINT_[@]}")"
		echo "$spec"
		awk '$2 == "F" { print $4 }' <<<"$spec" | sort -u | xargs -r -d '\n' sha256sum
	})
	# (generated files live in the run's own $WORK: only their content counts)
	key=$(sha256sum <<<"${inputs//"$WORK"/@work}" | cut -d' ' -f1)
	if [ -f "$tarball" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ]; then
		log "$ref: unchanged ($tarball)"
		return
	fi
	log "$ref: building"

	local dir="$WORK/img-$name" rootfs="$WORK/rootfs-$name" path typ mode src
	rm -rf "$dir" "$rootfs"
	mkdir -p "$dir/blobs/sha256" "$rootfs"
	# Directories first, then files, then symlinks: nothing is written through a symlink.
	for typ in D F L; do
		while read -r path t mode src; do
			[ "$t" = "$typ" ] || continue
			case $t in
			D)
				mkdir -p "$rootfs$path"
				chmod "$mode" "$rootfs$path"
				;;
			F)
				mkdir -p "$(dirname "$rootfs$path")"
				cp "$src" "$rootfs$path"
				chmod "$mode" "$rootfs$path"
				;;
			L)
				mkdir -p "$(dirname "$rootfs$path")"
				ln -s "$mode" "$rootfs$path"
				;;
			esac
		done <<<"$spec"
	done

	local layer="$WORK/layer-$name.tar" diff_id layer_digest layer_size
	tar_dir "$rootfs" "$layer"
	diff_id=$(sha "$layer")
	gzip -n -c "$layer" >"$layer.gz"
	layer_digest=$(sha "$layer.gz")
	layer_size=$(size "$layer.gz")
	mv "$layer.gz" "$dir/blobs/sha256/$layer_digest"
	rm -f "$layer"

	local created config cfg_digest cfg_size manifest man_digest man_size
	created=$(date -u -d "@$EPOCH" +%Y-%m-%dT%H:%M:%SZ)
	config="$WORK/config-$name.json"
	printf '{"architecture":"amd64","os":"linux","created":"%s","config":{%s"Env":%s,"Entrypoint":%s,"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"%s","created_by":"hack/images.sh"}]}' \
		"$created" "$cfg_user" "$cfg_env" "$(json_list "${ENTRYPOINT_[@]}")" "$diff_id" "$created" >"$config"
	cfg_digest=$(sha "$config")
	cfg_size=$(size "$config")
	mv "$config" "$dir/blobs/sha256/$cfg_digest"

	manifest="$WORK/manifest-$name.json"
	printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
		"$cfg_digest" "$cfg_size" "$layer_digest" "$layer_size" >"$manifest"
	man_digest=$(sha "$manifest")
	man_size=$(size "$manifest")
	mv "$manifest" "$dir/blobs/sha256/$man_digest"

	printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":%s,"org.opencontainers.image.ref.name":%s}}]}' \
		"$man_digest" "$man_size" "$(json_str "$ref")" "$(json_str "$tag")" >"$dir/index.json"
	printf '{"imageLayoutVersion":"1.0.0"}' >"$dir/oci-layout"

	rm -f "$stamp"
	tar_dir "$dir" "$tarball.tmp"
	mv "$tarball.tmp" "$tarball"
	echo "$key" >"$stamp"
	rm -rf "$dir" "$rootfs"
	log "$ref: $tarball ($(du -h "$tarball" | cut -f1), layer sha256:${layer_digest:0:12})"
}

# write_list: OUTDIR/images.txt, the images of this run, for hack/images-import.sh.
write_list() {
	printf '%s\n' "${IMAGES[@]}" >"$OUTDIR/images.txt.tmp"
	mv "$OUTDIR/images.txt.tmp" "$OUTDIR/images.txt"
	log "wrote $OUTDIR/images.txt"
}

# start_image NAME: resets the description for the next image.
start_image() {
	CUR=$1
	ENTRY=()
	HOST_SEEN=()
	USER_=""
	ENV_=("PATH=$DEFAULT_PATH")
	ENTRYPOINT_=()
	add_base
}

need_bin() {
	local flag=""
	[ "$PROFILE" = debug ] || flag=" --release"
	[ -x "$BIN_DIR/$1" ] || die "$BIN_DIR/$1 is missing: build it first (cargo build$flag ...)"
}

need_host() { # FILE PACKAGE
	[ -e "$1" ] || die "$1 is missing: apt-get install $2"
}

# ---------------------------------------------------------------------------------------------
# The pause binary, compiled once per Kubernetes version and gcc, cached in OUTDIR/.cache.

pause_binary() {
	command -v gcc >/dev/null || die "gcc is missing"
	local cc_id cache dir
	cc_id=$(gcc --version | head -1 | tr -c 'A-Za-z0-9.\n' _)
	cache="$OUTDIR/.cache/pause-$K8S_VERSION-$cc_id"
	if [ ! -x "$cache/pause" ]; then
		command -v go >/dev/null || die "go is missing (to fetch k8s.io/kubernetes@$K8S_VERSION)"
		dir=$(cd "$WORK" && GOFLAGS="" GOTOOLCHAIN=local go mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
			sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
		[ -f "$dir/build/pause/linux/pause.c" ] || die "no build/pause/linux/pause.c in k8s.io/kubernetes@$K8S_VERSION"
		mkdir -p "$cache"
		gcc -Os -Wall -static -s -DVERSION="$K8S_VERSION" -o "$cache/pause.tmp" "$dir/build/pause/linux/pause.c"
		mv "$cache/pause.tmp" "$cache/pause"
	fi
	echo "$cache/pause"
}

# ---------------------------------------------------------------------------------------------
# The images.

# The `binary` form: one image of BINARY per reference (a few MB each: simpler than an index
# naming one manifest several times, and hack/images-import.sh imports each as it is).
if [ "$PROFILE" = binary ]; then
	src=$3 user=$4
	shift 4
	[ -x "$src" ] || die "$src is not an executable file"
	for ref in "$@"; do
		case $ref in */*:*) ;; *) die "$ref: not a full reference (registry/name:tag)" ;; esac
		name="$(basename "$src")-${ref##*:}"
		start_image "$name"
		add_binary "$src" "/$(basename "$src")"
		USER_=$user
		ENTRYPOINT_=("/$(basename "$src")")
		write_image "$name" "$ref"
	done
	write_list
	exit 0
fi

for b in portico-operator portico-proxy portico-echo; do need_bin "$b"; done

# strip_debug SRC: a copy of SRC without its debug sections (the release profile keeps line
# tables for backtraces on the build machine; an image carries only what runs); prints its path.
strip_debug() {
	local out
	out="$WORK/stripped/$(basename "$1")"
	mkdir -p "$WORK/stripped"
	objcopy --strip-debug "$1" "$out"
	echo "$out"
}
need_host /usr/sbin/xtables-nft-multi iptables
need_host /bin/busybox busybox-static
need_host /usr/sbin/nginx nginx
need_host /etc/nginx/mime.types nginx

# 1. pause: the pod sandbox (containerd's pinned sandbox image).
pause=$(pause_binary)
start_image pause
add_binary "$pause" /pause
ENTRYPOINT_=(/pause)
write_image pause localhost/portico/pause:v1

# 2. The operator.
start_image portico-operator
add_binary "$(strip_debug "$BIN_DIR/portico-operator")" /usr/local/bin/portico-operator
USER_=65532:65532
ENTRYPOINT_=(/usr/local/bin/portico-operator)
write_image portico-operator "ghcr.io/portico-dev/portico-operator:$IMAGE_TAG"

# 3. The proxy, with iptables (nf_tables backend) for `portico-proxy init`. /run is where a pod
# mounts an emptyDir for xtables.lock, the root filesystem being read-only.
start_image portico-proxy
add_binary "$(strip_debug "$BIN_DIR/portico-proxy")" /usr/local/bin/portico-proxy
add_binary /usr/sbin/xtables-nft-multi /usr/sbin/xtables-nft-multi
for l in iptables iptables-restore iptables-save; do
	add_link "/usr/sbin/$l" xtables-nft-multi
done
add_host_path "$XTABLES_DIR"
exts=()
for f in "$XTABLES_DIR"/libxt_*.so "$XTABLES_DIR"/libipt_*.so; do
	[ -e "$f" ] || continue
	add_host_path "$f"
	exts+=("$f")
done
[ ${#exts[@]} -gt 0 ] || die "no xtables extensions in $XTABLES_DIR"
add_ldd_deps "${exts[@]}"
# Protocol names for `-p tcp` and listings (iptables has a built-in fallback for the common ones).
if [ -f /etc/protocols ]; then add_host_path /etc/protocols; fi
add_dir /run 755
USER_=65532:65532
ENTRYPOINT_=(/usr/local/bin/portico-proxy)
write_image portico-proxy "ghcr.io/portico-dev/portico-proxy:$IMAGE_TAG"

# 4. The test backend: portico-echo, and busybox for poking around (`sh`, `nc`).
start_image echo
add_binary "$(strip_debug "$BIN_DIR/portico-echo")" /usr/local/bin/portico-echo
add_host_path /bin/busybox
add_link "$(dirname "$(realpath /bin/busybox)")/sh" busybox
ENTRYPOINT_=(/usr/local/bin/portico-echo)
write_image echo localhost/portico/echo:v1

# 5. nginx as a plain HTTP backend on :8080, as nobody, writing only to /tmp.
start_image nginx
add_binary /usr/sbin/nginx /usr/sbin/nginx
add_host_path /etc/nginx/mime.types
add_text /etc/nginx/nginx.conf 644 <<'EOF'
# Portico's nginx test backend: foreground, unprivileged, writes only to /tmp.
daemon off;
worker_processes 1;
pid /tmp/nginx.pid;
error_log stderr;

events {
    worker_connections 1024;
}

http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log off;
    sendfile on;
    keepalive_timeout 65;

    client_body_temp_path /tmp/nginx-client-body;
    proxy_temp_path /tmp/nginx-proxy;
    fastcgi_temp_path /tmp/nginx-fastcgi;
    uwsgi_temp_path /tmp/nginx-uwsgi;
    scgi_temp_path /tmp/nginx-scgi;

    server {
        listen 8080;
        server_name _;
        root /usr/share/nginx/html;

        location / {
            index index.html;
        }

        location /healthz {
            default_type text/plain;
            return 200 "ok\n";
        }
    }
}
EOF
add_text /usr/share/nginx/html/index.html 644 <<'EOF'
<!DOCTYPE html>
<html>
<head><title>portico nginx backend</title></head>
<body><p>portico nginx backend</p></body>
</html>
EOF
USER_=65534:65534
ENTRYPOINT_=(/usr/sbin/nginx -c /etc/nginx/nginx.conf)
write_image nginx localhost/portico/nginx:v1

write_list
