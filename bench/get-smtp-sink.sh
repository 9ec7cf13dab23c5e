#!/bin/sh
# Fetch Postfix's smtp-sink (a C SMTP server that accepts and discards mail) into a cache directory,
# without installing a mail system: `apt-get download postfix`, unpack the .deb, keep smtp-sink and the
# two Postfix libraries it links, and write a wrapper that sets LD_LIBRARY_PATH.
#
#   bench/get-smtp-sink.sh [DEST]        (default DEST: <repo>/.cache/smtp-sink)
#
# Prints the wrapper's path on success. Needs apt-get and dpkg (Debian, Ubuntu); bench/run.py falls back
# to an aiosmtpd sink (and says so) when this fails.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST=${1:-"$ROOT/.cache/smtp-sink"}
WRAPPER="$DEST/smtp-sink"

works() {
    # smtp-sink without arguments prints its usage and exits 1; a missing library is reported by ldd.
    [ -x "$1" ] || return 1
    ! LD_LIBRARY_PATH="$DEST/root/usr/lib/postfix" ldd "$DEST/root/usr/sbin/smtp-sink" 2>/dev/null | grep -q "not found"
}

if works "$WRAPPER"; then
    echo "$WRAPPER"
    exit 0
fi

command -v apt-get >/dev/null 2>&1 || { echo "get-smtp-sink: apt-get not found" >&2; exit 1; }
command -v dpkg >/dev/null 2>&1 || { echo "get-smtp-sink: dpkg not found" >&2; exit 1; }

mkdir -p "$DEST"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
(cd "$WORK" && apt-get download postfix >"$WORK/apt.log" 2>&1) || {
    echo "get-smtp-sink: apt-get download postfix failed:" >&2
    tail -3 "$WORK/apt.log" >&2
    exit 1
}
rm -rf "$DEST/root"
dpkg -x "$WORK"/postfix_*.deb "$WORK/root"
mkdir -p "$DEST/root/usr/sbin" "$DEST/root/usr/lib/postfix"
cp "$WORK/root/usr/sbin/smtp-sink" "$DEST/root/usr/sbin/"
cp "$WORK/root/usr/lib/postfix/"libpostfix-*.so "$DEST/root/usr/lib/postfix/"
ls "$WORK"/postfix_*.deb | sed 's|.*/||' >"$DEST/VERSION"

cat >"$WRAPPER" <<WRAP
#!/bin/sh
LD_LIBRARY_PATH="$DEST/root/usr/lib/postfix\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$DEST/root/usr/sbin/smtp-sink" "\$@"
WRAP
chmod 755 "$WRAPPER"

if ! works "$WRAPPER"; then
    echo "get-smtp-sink: smtp-sink was unpacked but cannot run here (missing libraries):" >&2
    LD_LIBRARY_PATH="$DEST/root/usr/lib/postfix" ldd "$DEST/root/usr/sbin/smtp-sink" | grep "not found" >&2
    exit 1
fi
echo "$WRAPPER"
