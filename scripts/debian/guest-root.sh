#!/bin/sh
# Builds (once) the Debian 12 root that test/package.test.ts boots with
# systemd-nspawn, and prints its path. Later runs find it and return at once.
#
#   scripts/debian/guest-root.sh [CACHE_DIR]     (default /var/cache/edgemqtt-test)
#
# minbase plus systemd (PID 1 in the guest), dbus and procps (which a Debian
# install has and the package depends on: /bin/kill); apt, dpkg and passwd
# come with minbase. The test boots it with --volatile=overlay, so no run
# changes it. The mirror is the one apt on this machine uses (deb.debian.org
# where none is found); $EDGEMQTT_DEBIAN_MIRROR overrides it. Measured here: 50-73 s
# and about 210 MB, on the first run only.
set -eu

cache=${1:-/var/cache/edgemqtt-test}
suite=bookworm
include=systemd,systemd-sysv,dbus,procps
# A changed package list gets a root of its own instead of a stale one.
root="$cache/$suite-$(printf %s "$include" | md5sum | cut -c1-8)"

if [ -e "$root/.complete" ]; then
	echo "$root"
	exit 0
fi

mirror=${EDGEMQTT_DEBIAN_MIRROR:-}
if [ -z "$mirror" ] && [ -r /etc/apt/sources.list.d/debian.sources ]; then
	mirror=$(awk '$1 == "URIs:" && $2 ~ /\/debian\/?$/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)
fi
if [ -z "$mirror" ] && [ -r /etc/apt/sources.list ]; then
	mirror=$(awk '$1 == "deb" && $3 ~ /^bookworm$/ { print $2; exit }' /etc/apt/sources.list)
fi
mirror=${mirror:-http://deb.debian.org/debian}

mkdir -p "$cache"
# One build at a time; a second caller waits and then finds it done.
exec 9>"$cache/.lock"
flock 9
if [ ! -e "$root/.complete" ]; then
	rm -rf "$root.partial"
	echo "guest-root: debootstrap $suite from $mirror into $root (once; about a minute)" >&2
	debootstrap --variant=minbase --include="$include" "$suite" "$root.partial" "$mirror" >"$cache/debootstrap.log" 2>&1 || {
		tail -n 20 "$cache/debootstrap.log" >&2
		exit 1
	}
	# apt's package cache is not needed to boot; the guest starts small.
	rm -rf "$root.partial"/var/cache/apt/archives/*.deb
	rm -rf "$root"
	mv "$root.partial" "$root"
	touch "$root/.complete"
fi
echo "$root"
