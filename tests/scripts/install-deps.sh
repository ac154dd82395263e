#!/bin/sh
# Install what the build and the test suite need, only when missing; quiet
# when everything is there.
#
#   install-deps.sh            everything (`make deps`)
#   install-deps.sh toolchain  only what `make agent` needs; never fails:
#                              `make agent` skips what is still missing
#
# toolchain: the musl targets (x86_64, aarch64), rust-src (to build std for
# size), and Debian's armhf musl (crt1.o, libc.a) for armv7, unpacked into
# target/cross/ (never installed system-wide).
#
# everything: also openssh-server (the tests start their own sshd on
# 127.0.0.1), sudo and doas (become methods), busybox-static (a minimal shell
# for odd targets), pssh (parallel-ssh, a peer in `make bench`), tmux (a
# terminal for the progress-line tests), qemu-user-static and binfmt-support (foreign agents), and
# the foreign and minimal busyboxes the Docker images are made of, unpacked
# into target/cross/ too (and a newer qemu-user where the system's is too
# old, see below). Services are never started by the install
# (policy-rc.d), so the machine's own ssh setup is left alone.
set -eu
mode=${1:-all}
root=$(cd "$(dirname "$0")/../.." && pwd)
cross=${CARGO_TARGET_DIR:-$root/target}/cross
# Debian packages unpacked under target/cross/<package>_<arch>/.
armhf_musl="musl-dev:armhf"
images="busybox-static:arm64 busybox-static:armhf busybox:amd64 busybox:arm64 libc6:amd64 libc6:arm64"

say() { echo "install-deps: $*" >&2; }
is_root() { [ "$(id -u)" = 0 ]; }

# rustup pieces, each on its own: a failure is reported once and left to
# `make agent` to work around.
toolchain() {
    command -v rustup >/dev/null 2>&1 || return 0
    have_targets=$(rustup target list --installed 2>/dev/null)
    for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
        echo "$have_targets" | grep -qx "$t" || rustup -q target add "$t" >/dev/null 2>&1 ||
            say "rustup target add $t failed"
    done
    rustup component list --installed 2>/dev/null | grep -q '^rust-src' ||
        rustup -q component add rust-src >/dev/null 2>&1 || say "rustup component add rust-src failed"
    unpack "$armhf_musl" || true
}

updated=
apt_update() {
    [ -n "$updated" ] && return 0
    updated=1
    apt-get update -qq >/dev/null 2>&1 || say "apt-get update failed"
}

# Foreign architectures of PKG:ARCH... added to dpkg (root only), so apt
# can see their packages.
add_archs() {
    native=$(dpkg --print-architecture 2>/dev/null) || { say "no dpkg: can't fetch $*"; return 1; }
    for p in "$@"; do
        a=${p#*:}
        [ "$a" = "$native" ] && continue
        dpkg --print-foreign-architectures | grep -qx "$a" && continue
        if ! is_root; then
            say "need dpkg --add-architecture $a (root) for $*"
            return 1
        fi
        dpkg --add-architecture "$a"
        updated=
        apt_update
    done
}

# fetch DIR PKG:ARCH...: `apt-get download` them into DIR.
fetch() {
    dir=$1
    shift
    add_archs "$@" || return 1
    (cd "$dir" && apt-get download -qq "$@" >/dev/null 2>&1) && return 0
    apt_update
    (cd "$dir" && apt-get download -qq "$@" >/dev/null 2>&1) || { say "apt-get download $* failed"; return 1; }
}

# unpack PKG:ARCH...: each `dpkg -x`ed into target/cross/PKG_ARCH/, unless
# it is there already.
unpack() {
    missing=
    for p in "$@"; do
        [ -f "$cross/${p%%:*}_${p#*:}/.unpacked" ] || missing="$missing $p"
    done
    [ -z "$missing" ] && return 0
    tmp=$(mktemp -d)
    # shellcheck disable=SC2086
    fetch "$tmp" $missing || { rm -rf "$tmp"; return 1; }
    for p in $missing; do
        dir="$cross/${p%%:*}_${p#*:}"
        deb=$(ls "$tmp/${p%%:*}_"*"_${p#*:}.deb")
        rm -rf "$dir"
        mkdir -p "$dir"
        dpkg -x "$deb" "$dir"
        basename "$deb" >"$dir/.unpacked"
    done
    rm -rf "$tmp"
}

# bundle NAME PKG:ARCH...: all of them `dpkg -x`ed together into
# target/cross/NAME/, unless it is there already.
bundle() {
    name=$1
    shift
    [ -f "$cross/$name/.unpacked" ] && return 0
    tmp=$(mktemp -d)
    fetch "$tmp" "$@" || { rm -rf "$tmp"; return 1; }
    rm -rf "${cross:?}/$name"
    mkdir -p "$cross/$name"
    for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$cross/$name"; done
    (cd "$tmp" && ls) >"$cross/$name/.unpacked"
    rm -rf "$tmp"
}

if [ "$mode" = toolchain ]; then
    # `make agent` says in one line what it can't build, and why.
    toolchain 2>/dev/null
    exit 0
fi
toolchain

need=
command -v /usr/sbin/sshd >/dev/null 2>&1 || need="$need openssh-server"
command -v ssh >/dev/null 2>&1 || need="$need openssh-client"
command -v sudo >/dev/null 2>&1 || need="$need sudo"
command -v doas >/dev/null 2>&1 || need="$need opendoas"
[ -x /bin/busybox ] || need="$need busybox-static"
[ -x /usr/bin/qemu-aarch64-static ] || need="$need qemu-user-static"
command -v update-binfmts >/dev/null 2>&1 || need="$need binfmt-support"
# The fleet bench's peer (Debian's binary is parallel-ssh), and a real
# terminal for the progress-line tests.
command -v parallel-ssh >/dev/null 2>&1 || need="$need pssh"
command -v tmux >/dev/null 2>&1 || need="$need tmux"
if [ -n "$need" ]; then
    if ! is_root; then
        say "need$need, and only root can install them"
        exit 1
    fi
    say "installing$need"
    policy=/usr/sbin/policy-rc.d
    made_policy=
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        made_policy=1
    fi
    trap '[ -n "$made_policy" ] && rm -f "$policy"' EXIT
    export DEBIAN_FRONTEND=noninteractive
    apt_update
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $need >/dev/null
fi
# shellcheck disable=SC2086
unpack $images
# An arm64 sshd host (tests/docker/build-rootfs.sh target-arm64): sshd and
# the libraries it links, as on this machine.
sshd_libs="libaudit1 libc6 libcap-ng0 libcap2 libcom-err2 libcrypt1 libgcrypt20 libgpg-error0 libgssapi-krb5-2
    libk5crypto3 libkeyutils1 libkrb5-3 libkrb5support0 liblz4-1 liblzma5 libnsl2 libpam0g libpcre2-8-0 libselinux1
    libssl3 libsystemd0 libtirpc3 libwrap0 libzstd1 zlib1g"
# shellcheck disable=SC2046
bundle sshd_arm64 openssh-server:arm64 $(for p in $sshd_libs; do echo "$p:arm64"; done)

# Bookworm's qemu-user (7.2) fails prctl(PR_SET_CHILD_SUBREAPER) with
# EINVAL, and with it every exec of a foreign agent; QEMU 8 passes it on.
# With an older system qemu, qemu-aarch64 and qemu-arm (static) from
# bookworm-backports go to target/cross/qemu-user_bpo/ (apt's state for
# that in target/cross/apt-bpo/; the system's sources are left alone) and
# the tests register those (tests/src/docker.rs, require_foreign_arch).
qemu_major=$(/usr/bin/qemu-aarch64-static --version 2>/dev/null | sed -n 's/.*version \([0-9]*\)\..*/\1/p;q')
bpo="$cross/qemu-user_bpo"
if [ "${qemu_major:-0}" -lt 8 ] && [ ! -f "$bpo/.unpacked" ]; then
    apt="$cross/apt-bpo"
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial"
    echo "deb http://deb.debian.org/debian bookworm-backports main" >"$apt/sources.list"
    set -- -o Dir::Etc::SourceList="$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null \
        -o Dir::State::Lists="$apt/lists" -o Dir::Cache="$apt/cache" -o APT::Architectures::=amd64
    tmp=$(mktemp -d)
    if apt-get "$@" update -qq >/dev/null 2>&1 && (cd "$tmp" && apt-get "$@" download -qq qemu-user >/dev/null 2>&1); then
        rm -rf "$bpo" "$tmp/x"
        dpkg -x "$tmp"/qemu-user_*.deb "$tmp/x"
        mkdir -p "$bpo"
        cp "$tmp/x/usr/bin/qemu-aarch64" "$tmp/x/usr/bin/qemu-arm" "$bpo/"
        basename "$tmp"/qemu-user_*.deb >"$bpo/.unpacked"
    else
        say "qemu-user ${qemu_major:-?} here, and qemu-user from bookworm-backports could not be fetched: foreign agents can't exec"
    fi
    rm -rf "$tmp"
fi
