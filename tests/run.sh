#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this script).
#
# 1. Installs what the tests need from Debian if it is missing: a C compiler and libc's static
#    archive (the linker, ring, the static binary), tor (with tor-gencert) for the private Tor
#    network, iproute2 and util-linux for the network namespace, iptables to cut one node's TCP
#    (tests/support/firewall.rs), libfaketime to run one node with its clock ahead
#    (tests/e2e_cluster.rs), systemd's tools (systemd-analyze, -sysusers, -tmpfiles: the unit
#    and the Debian package), python3-venv; and Onionbalance 0.2.4 from PyPI into a virtualenv
#    outside the clone (tests/e2e_peers.rs replaces a running Onionbalance).
# 2. Builds everything (this needs crates.io the first time), including the static release
#    binary exactly as README.md's build command makes it (tests/static_binary.rs checks it)
#    and its Debian package with cargo-deb, installed once per machine
#    (tests/debian_package.rs).
# 3. Runs every test -- unit, multi-node and end-to-end on the private Tor network -- inside a
#    fresh network namespace with only loopback up, so nothing can leave 127.0.0.1 (Arti's
#    defaults would dial the public Tor network). Without the privileges for a namespace, it
#    says so and runs the tests directly: they only ever use 127.0.0.1.
#
# Extra arguments go to `cargo test` (e.g. `bash tests/run.sh --test e2e_bootstrap`).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v cc >/dev/null || missing+=(gcc libc6-dev)
command -v tor >/dev/null || missing+=(tor)
command -v tor-gencert >/dev/null || missing+=(tor)
command -v ip >/dev/null || missing+=(iproute2)
command -v unshare >/dev/null || missing+=(util-linux)
command -v iptables >/dev/null || missing+=(iptables)
command -v systemd-analyze >/dev/null || missing+=(systemd)
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || missing+=(libfaketime)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "tests/run.sh: installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Debian's tor package starts a system tor service where systemd runs; the tests need none.

# The incumbent, for the migration test: its own virtualenv, installed once per machine.
onionbalance_venv="${RB_ONIONBALANCE_VENV:-/var/tmp/rustbalance-onionbalance-venv}"
if [ ! -x "$onionbalance_venv/bin/onionbalance" ]; then
    echo "tests/run.sh: installing onionbalance 0.2.4 into $onionbalance_venv"
    python3 -m venv "$onionbalance_venv"
    "$onionbalance_venv/bin/pip" install -q onionbalance==0.2.4
fi
export RB_ONIONBALANCE="$onionbalance_venv/bin/onionbalance"

cargo build --locked --all-targets
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target x86_64-unknown-linux-gnu
# The Debian package of that binary, as README.md builds it (tests/debian_package.rs).
command -v cargo-deb >/dev/null || cargo install --locked cargo-deb@3.8.0
cargo deb --no-build --locked --target x86_64-unknown-linux-gnu

in_namespace='ip link set lo up && exec cargo test --locked --offline "$@"'
if [ "$(id -u)" -eq 0 ] && unshare -n true 2>/dev/null; then
    exec unshare -n -- bash -c "$in_namespace" bash "$@"
elif unshare -rn true 2>/dev/null; then
    exec unshare -rn -- bash -c "$in_namespace" bash "$@"
else
    echo "tests/run.sh: cannot create a network namespace here; running the tests directly (they only use 127.0.0.1)"
    exec cargo test --locked --offline "$@"
fi
