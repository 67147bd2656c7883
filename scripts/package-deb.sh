#!/usr/bin/env bash
# Builds the Debian package of tbg with dpkg-deb (no debhelper needed):
#   /usr/bin/tbg, the systemd units of deploy/systemd (pointing at
#   /usr/bin/tbg), /etc/tbg/tbg.toml (the documented example, a conffile),
#   the docs under /usr/share/doc/tbg, and maintainer scripts that create
#   the `tbg` system user, /var/lib/tbg and /etc/tbg/tbg.env (mode 0600).
#
#   scripts/package-deb.sh                 # cargo build --release, then target/debian/tbg_<version>_<arch>.deb
#   TBG_BINARY=path/to/tbg scripts/package-deb.sh   # package that binary instead
#   TBG_DEB_OUT=dir TBG_DEB_COMPRESS=none ...        # where to, and dpkg-deb's -Z
# Prints the path of the package on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
out=${TBG_DEB_OUT:-target/debian}
binary=${TBG_BINARY:-}
if [ -z "$binary" ]; then
    cargo build --locked --release -p tbg >&2
    binary=${CARGO_TARGET_DIR:-target}/release/tbg
fi
[ -x "$binary" ] || { echo "no tbg binary at $binary" >&2; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
install -d "$stage/DEBIAN" "$stage/usr/bin" "$stage/lib/systemd/system" \
    "$stage/etc/tbg" "$stage/usr/share/doc/tbg/examples"
install -m 0755 "$binary" "$stage/usr/bin/tbg"
# Debug info stays in the build tree; the package carries the code.
strip --strip-debug "$stage/usr/bin/tbg" 2>/dev/null || true
for unit in deploy/systemd/*.service deploy/systemd/*.timer; do
    sed 's|/usr/local/bin/tbg|/usr/bin/tbg|g' "$unit" > "$stage/lib/systemd/system/$(basename "$unit")"
    chmod 0644 "$stage/lib/systemd/system/$(basename "$unit")"
done
install -m 0640 crates/config/config.example.toml "$stage/etc/tbg/tbg.toml"
install -m 0644 crates/config/config.example.toml "$stage/usr/share/doc/tbg/examples/tbg.toml"
install -m 0644 README.md docs/*.md "$stage/usr/share/doc/tbg/"
cp -r monitoring "$stage/usr/share/doc/tbg/monitoring"
cat > "$stage/usr/share/doc/tbg/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: tbg
License: MIT
EOF

installed_kb=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat > "$stage/DEBIAN/control" <<EOF
Package: tbg
Version: $version
Architecture: $arch
Maintainer: tbg developers <tbg@localhost>
Installed-Size: $installed_kb
Depends: libc6 (>= 2.34), libgcc-s1, libstdc++6
Recommends: curl
Suggests: bitcoind, postgresql, redis-server, nats-server
Section: net
Priority: optional
Description: Bitcoin solo-mining pool (Stratum V1, TLS) with a durable event pipeline
 A hosted solo-mining service: each block pays the miner that found it.
 Work comes from Bitcoin Core; found blocks are on disk before they are
 submitted to every node. Events go to a durable journal, then Redis
 Streams and PostgreSQL (tbg collector). Prometheus metrics, a public
 dashboard, signed webhooks, relay regions over NATS JetStream, backups.
 .
 Configure /etc/tbg/tbg.toml and /etc/tbg/tbg.env, then
 systemctl enable --now tbg-pool.
EOF
echo /etc/tbg/tbg.toml > "$stage/DEBIAN/conffiles"

cat > "$stage/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    if ! getent passwd tbg >/dev/null; then
        useradd --system --user-group --home-dir /var/lib/tbg --no-create-home \
            --shell /usr/sbin/nologin --comment "tbg mining pool" tbg
    fi
    install -d -o tbg -g tbg -m 0750 /var/lib/tbg
    chgrp tbg /etc/tbg/tbg.toml && chmod 0640 /etc/tbg/tbg.toml
    if [ ! -e /etc/tbg/tbg.env ]; then
        # Secrets (TBG_NODE_PASS, TBG_REDIS_URL, TBG_POSTGRES_URL,
        # TBG_WEBHOOK_<N>_SECRET, ...): read by systemd before it drops to tbg.
        install -m 0600 /dev/null /etc/tbg/tbg.env
        echo "# KEY=value lines: see /usr/share/doc/tbg/disaster-recovery.md" > /etc/tbg/tbg.env
    fi
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null || true
    fi
    echo "tbg: edit /etc/tbg/tbg.toml ([[nodes]]) and /etc/tbg/tbg.env, then: systemctl enable --now tbg-pool"
fi
EOF
cat > "$stage/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
    for unit in tbg-health.timer tbg-backup.timer tbg-publisher.service tbg-collector.service tbg-pool.service; do
        systemctl stop "$unit" >/dev/null 2>&1 || true
        systemctl disable "$unit" >/dev/null 2>&1 || true
    done
fi
EOF
cat > "$stage/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = purge ]; then
    rm -f /etc/tbg/tbg.env
    rmdir /etc/tbg 2>/dev/null || true
    # The journal and the found blocks under /var/lib/tbg are the operator's:
    # kept. The user goes once nothing of it is left.
    if [ ! -e /var/lib/tbg ] && getent passwd tbg >/dev/null; then
        userdel tbg >/dev/null 2>&1 || true
    fi
    if [ -e /var/lib/tbg ]; then
        echo "tbg: /var/lib/tbg (journal, found blocks) kept; remove it, then the tbg user (userdel tbg), by hand"
    fi
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
fi
EOF
chmod 0755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/prerm" "$stage/DEBIAN/postrm"

mkdir -p "$out"
package="$out/tbg_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Z"${TBG_DEB_COMPRESS:-xz}" --build "$stage" "$package" >&2
echo "$package"
