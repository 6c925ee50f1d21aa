#!/bin/sh
# Build the base image troupe/base:bookworm without a registry: a minimal Debian bookworm
# root file system made by debootstrap from this machine's own Debian mirror, imported
# with `docker import`. Needs root (debootstrap), debootstrap and a running docker.
#
#   docker/base.sh [--force] [TAG]      (TAG: troupe/base:bookworm)
#
# An existing TAG is kept (a test run builds the base once) unless --force is given.
# Environment: DEBIAN_MIRROR (default: the first URIs of /etc/apt/sources.list.d/debian.sources,
# else of /etc/apt/sources.list, else http://deb.debian.org/debian), DEBIAN_SECURITY_MIRROR,
# TROUPE_BASE_CACHE (a directory: the root file system's tarball is kept there and reused).
set -eu
force=0
if [ "${1:-}" = --force ]; then force=1; shift; fi
tag=${1:-troupe/base:bookworm}
suite=bookworm

if [ "$force" = 0 ] && docker image inspect "$tag" >/dev/null 2>&1; then
    echo "base.sh: $tag exists (--force builds it again)"
    exit 0
fi

# The machine's mirrors: deb822 sources first, then the one-line format.
first_uri() {  # $1: a pattern the URI must match
    { grep -hoE '^URIs: *\S+' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
      grep -hoE '^deb +(\[[^]]*\] +)?\S+' /etc/apt/sources.list 2>/dev/null | awk '{print $NF}'
    } | grep -E "$1" | head -1
}
mirror=${DEBIAN_MIRROR:-$(first_uri '/debian/?$' || true)}
mirror=${mirror:-http://deb.debian.org/debian}
security=${DEBIAN_SECURITY_MIRROR:-$(first_uri 'debian-security/?$' || true)}
security=${security:-http://deb.debian.org/debian-security}

work=$(mktemp -d "${TMPDIR:-/tmp}/troupe-base.XXXXXX")
root="$work/rootfs"
cleanup() {
    # debootstrap mounts /proc and /sys inside the target; a failed run may leave them.
    for m in "$root/proc" "$root/sys" "$root/dev/pts"; do
        if mountpoint -q "$m" 2>/dev/null; then umount -l "$m" || true; fi
    done
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

tarball="${TROUPE_BASE_CACHE:+$TROUPE_BASE_CACHE/rootfs-$suite.tar}"
if [ -n "$tarball" ] && [ -s "$tarball" ]; then
    echo "base.sh: reusing $tarball"
else
    command -v debootstrap >/dev/null || { echo "base.sh: debootstrap is not installed" >&2; exit 1; }
    echo "base.sh: debootstrap $suite from $mirror"
    debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
        tail -20 "$work/debootstrap.log" >&2; exit 1; }
    # Slim it as Debian's own images are: no documentation, man pages or translations
    # now or in what later layers install, no package lists or downloaded packages.
    cat >"$root/etc/dpkg/dpkg.cfg.d/troupe-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
    cat >"$root/etc/apt/apt.conf.d/troupe-clean" <<'EOF'
APT::Install-Recommends "false";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
Acquire::Languages "none";
EOF
    printf 'deb %s %s main\ndeb %s %s-updates main\ndeb %s %s-security main\n' \
        "$mirror" "$suite" "$mirror" "$suite" "$security" "$suite" >"$root/etc/apt/sources.list"
    find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    rm -rf "$root/usr/share/man/"* "$root/usr/share/info/"* "$root/usr/share/locale/"* \
        "$root/var/lib/apt/lists/"* "$root/var/cache/apt/"*.bin "$root/var/cache/apt/archives/"*.deb \
        "$root/var/log/"*.log "$root/var/log/apt/"*
    if [ -n "$tarball" ]; then
        mkdir -p "$TROUPE_BASE_CACHE"
        tar --numeric-owner -C "$root" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    fi
fi

if [ -n "$tarball" ] && [ -s "$tarball" ]; then
    docker import --change 'CMD ["/bin/bash"]' "$tarball" "$tag" >/dev/null
else
    tar --numeric-owner -C "$root" -c . | docker import --change 'CMD ["/bin/bash"]' - "$tag" >/dev/null
fi
echo "base.sh: $tag ($(docker image inspect --format '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
