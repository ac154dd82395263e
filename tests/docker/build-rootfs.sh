#!/bin/sh
# Assemble the root filesystem of a constrained test host from this
# machine's Debian packages: busybox (static) as /bin/sh and every other
# tool, sshd, sudo with the PAM bits it needs, and the libraries ldd names.
# No Python, no bash, no coreutils. The bastion also gets the ssh client.
#
#   build-rootfs.sh target|bastion|target-arm64 OUTDIR
#
# target-arm64: the same host for arm64 (run through qemu-user), from
# Debian's arm64 packages that install-deps.sh unpacked in target/cross/:
# busybox and sshd with its libraries; no sudo.
#
# Users: root; spore (uid 1000, key login, passwordless sudo, a home it may
# not write); sporepw (uid 1001, key login, sudo with password "sporepw-1").
set -eu
role=$1
out=$2
here=$(cd "$(dirname "$0")" && pwd)
cross=${CARGO_TARGET_DIR:-$here/../../target}/cross
rm -rf "$out"
mkdir -p "$out/rootfs"
cd "$out/rootfs"
mkdir -p bin usr/bin usr/sbin usr/lib/x86_64-linux-gnu/security usr/lib64 usr/libexec/sudo \
    etc/ssh etc/pam.d etc/sudoers.d run/sshd root home/spore home/sporepw var/tmp tmp
ln -s usr/lib lib
ln -s usr/lib64 lib64
chmod 1777 tmp var/tmp
chmod 700 root

copy() {
    mkdir -p ".$(dirname "$1")"
    cp -L "$1" ".$1"
}
if [ "$role" = target-arm64 ]; then
    debs=$cross/sshd_arm64
    [ -f "$debs/.unpacked" ] && [ -f "$cross/busybox-static_arm64/.unpacked" ] ||
        { echo "build-rootfs.sh: no arm64 packages in $cross: run tests/scripts/install-deps.sh" >&2; exit 1; }
    cp "$cross/busybox-static_arm64/bin/busybox" bin/busybox
    cp "$debs/usr/sbin/sshd" usr/sbin/sshd
    # The libraries sshd needs, by their DT_NEEDED, from the unpacked packages.
    mkdir -p usr/lib/aarch64-linux-gnu
    todo=usr/sbin/sshd
    seen=
    while [ -n "$todo" ]; do
        set -- $todo
        f=$1
        shift
        todo="$*"
        for n in $(readelf -d "$f" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'); do
            case " $seen " in *" $n "*) continue ;; esac
            seen="$seen $n"
            src=$(find "$debs/lib/aarch64-linux-gnu" "$debs/usr/lib/aarch64-linux-gnu" -name "$n" | head -1)
            [ -n "$src" ] || { echo "build-rootfs.sh: $n (needed by $f) is in none of the packages" >&2; exit 1; }
            cp -L "$src" "usr/lib/aarch64-linux-gnu/$n"
            todo="$todo usr/lib/aarch64-linux-gnu/$n"
        done
    done
    ln -s aarch64-linux-gnu/ld-linux-aarch64.so.1 usr/lib/ld-linux-aarch64.so.1
else
    cp /bin/busybox bin/busybox
    files="/usr/sbin/sshd /usr/bin/sudo /usr/libexec/sudo/sudoers.so /usr/libexec/sudo/group_file.so
        /usr/libexec/sudo/system_group.so /usr/lib/x86_64-linux-gnu/security/pam_unix.so
        /usr/lib/x86_64-linux-gnu/security/pam_permit.so /usr/lib/x86_64-linux-gnu/security/pam_deny.so"
    [ "$role" = bastion ] && files="$files /usr/bin/ssh"
    for f in $files; do copy "$f"; done
    for lib in $(for f in $files; do ldd "$f"; done | awk '/=>/ { print $3 } /ld-linux/ { print $1 }' | sort -u); do
        copy "$lib"
    done
    copy /lib64/ld-linux-x86-64.so.2
fi
# (An arm64 busybox lists its applets through qemu-user.)
for applet in $(bin/busybox --list); do
    [ -e "bin/$applet" ] || ln -s busybox "bin/$applet"
done

cat >etc/passwd <<'P'
root:x:0:0:root:/root:/bin/sh
sshd:x:100:65534:sshd privsep:/run/sshd:/bin/false
spore:x:1000:1000:spore:/home/spore:/bin/sh
sporepw:x:1001:1001:spore with a sudo password:/home/sporepw:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
P
cat >etc/group <<'G'
root:x:0:
spore:x:1000:
sporepw:x:1001:
nogroup:x:65534:
G
hash=$(openssl passwd -6 -salt sporetest sporepw-1)
cat >etc/shadow <<S
root:*:19000:0:99999:7:::
sshd:*:19000:0:99999:7:::
spore:*:19000:0:99999:7:::
sporepw:$hash:19000:0:99999:7:::
nobody:*:19000:0:99999:7:::
S
chmod 600 etc/shadow
printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n' >etc/nsswitch.conf
printf '127.0.0.1 localhost\n' >etc/hosts
printf 'auth required pam_unix.so\naccount required pam_unix.so\nsession required pam_permit.so\n' >etc/pam.d/sudo
printf 'auth required pam_deny.so\naccount required pam_deny.so\nsession required pam_deny.so\n' >etc/pam.d/other
cat >etc/sudoers <<'U'
Defaults !lecture, timestamp_timeout=0, passwd_tries=1
root ALL=(ALL:ALL) ALL
spore ALL=(ALL) NOPASSWD: ALL
sporepw ALL=(ALL) ALL
U
chmod 440 etc/sudoers
cat >etc/ssh/sshd_config <<'C'
Port 22
HostKey /etc/ssh/ssh_host_ed25519_key
AuthorizedKeysFile /etc/spore/authorized_keys
StrictModes no
UsePAM no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
PrintMotd no
LogLevel ERROR
MaxStartups 100
MaxSessions 100
Subsystem sftp none
C
ssh-keygen -q -t ed25519 -N '' -C "spore-$role" -f etc/ssh/ssh_host_ed25519_key
if [ "$role" = bastion ]; then
    mkdir -p root/.ssh
    printf 'Host *\n  IdentityFile /etc/spore/id\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n' >root/.ssh/config
    chmod 700 root/.ssh
fi
if [ "$role" = target-arm64 ]; then
    chmod 755 home/spore
    cat >../Dockerfile <<'D'
FROM scratch
COPY rootfs/ /
CMD ["/usr/sbin/sshd", "-D", "-e"]
D
else
    cat >../Dockerfile <<'D'
FROM scratch
COPY rootfs/ /
RUN ["/bin/busybox", "sh", "-c", "chown 1001:1001 /home/sporepw && chmod 4755 /usr/bin/sudo && chmod 755 /home/spore"]
CMD ["/usr/sbin/sshd", "-D", "-e"]
D
fi
