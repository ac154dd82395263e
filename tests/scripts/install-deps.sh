#!/bin/sh
# Install what the test suite needs from Debian's packages, when missing:
# openssh-server (the tests start their own sshd on 127.0.0.1), sudo and
# doas (become methods), busybox-static (a minimal shell for odd targets).
# Services are never started by the install (policy-rc.d), so the machine's
# own ssh setup is left alone.
set -eu
need=
command -v /usr/sbin/sshd >/dev/null 2>&1 || need="$need openssh-server"
command -v ssh >/dev/null 2>&1 || need="$need openssh-client"
command -v sudo >/dev/null 2>&1 || need="$need sudo"
command -v doas >/dev/null 2>&1 || need="$need opendoas"
[ -x /bin/busybox ] || need="$need busybox-static"
[ -z "$need" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "install-deps: need$need, and only root can install them" >&2
    exit 1
fi
echo "install-deps: installing$need"
policy=/usr/sbin/policy-rc.d
made_policy=
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    made_policy=1
fi
trap '[ -n "$made_policy" ] && rm -f "$policy"' EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $need >/dev/null
