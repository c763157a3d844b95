#!/usr/bin/env bash
# Install everything the tests need, then run them all: lint, format, types, unit, fuzz, tshark
# differential, the lab's end-to-end tests, kubectl ktrace against the lab's API server and
# against a real Kubernetes built from its Go modules (tests/cluster: the first run builds it
# into /var/cache/ktrace-cluster for minutes). Run as root on Debian/Ubuntu with Go: tshark and
# tcpdump come from apt, the lab and the cluster make network namespaces.
# Extra arguments go to pytest, e.g. tests/run.sh -k dns
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v tshark >/dev/null || missing+=(tshark)
command -v tcpdump >/dev/null || missing+=(tcpdump)
command -v ip >/dev/null || missing+=(iproute2)
# the lab: iptables and nft (kube-proxy's two modes), dnsmasq (cluster DNS), conntrack, ethtool
command -v iptables-restore >/dev/null || missing+=(iptables)
command -v nft >/dev/null || missing+=(nftables)
command -v dnsmasq >/dev/null || missing+=(dnsmasq-base)
command -v conntrack >/dev/null || missing+=(conntrack)
command -v ethtool >/dev/null || missing+=(ethtool)
# the plugin's end-to-end tests: dig in the "debug image", the API server's TLS certificate,
# nsenter/unshare/setpriv for containers' namespaces and capabilities
command -v dig >/dev/null || missing+=(bind9-dnsutils)
command -v openssl >/dev/null || missing+=(openssl)
command -v setpriv >/dev/null || missing+=(util-linux)
# the TUI's real-terminal test
command -v tmux >/dev/null || missing+=(tmux)
# the real cluster (tests/cluster, built with Go): containerd and runc, the CNI plugins, the
# workload image's busybox, kube-router's ipset
command -v containerd >/dev/null || missing+=(containerd)
command -v runc >/dev/null || missing+=(runc)
[ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
[ -x /usr/bin/busybox ] || missing+=(busybox-static)
command -v ipset >/dev/null || missing+=(ipset)
python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
if ((${#missing[@]})); then
    echo "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"

.venv/bin/ruff check ktrace tests
.venv/bin/ruff format --check ktrace tests
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
