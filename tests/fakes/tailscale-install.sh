#!/bin/sh
# Fake Tailscale install script (served as file://): counts its runs and installs the fake
# tailscale CLI into the host's bin directory (first on its PATH).
set -eu
d=${FAKE_HOST_DIR:?}
echo run >> "$d/install.runs"
mkdir -p "$d/bin"
cp "${FAKE_TAILSCALE_SRC:?}" "$d/bin/tailscale"
chmod 755 "$d/bin/tailscale"
