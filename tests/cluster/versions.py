"""Every component of the real cluster, at one pinned release each: what `build` compiles and
installs, and what the build cache is keyed on.

Kubernetes 1.34 is the newest release whose kubelet runs on cgroup v1 (these machines have no
unified hierarchy) by default: from 1.35 the kubelet refuses cgroup v1 unless told
`failCgroupV1: false`, and the kubelet's configuration here says `failCgroupV1: false` anyway.
etcd is the release Kubernetes 1.34.4 itself requires. containerd, runc and the CNI plugins come
from Debian's packages (bookworm): containerd 1.6 speaks CRI v1, which the 1.34 kubelet needs.
"""

from __future__ import annotations

import hashlib

KUBERNETES = "1.34.4"  # k8s.io/kubernetes: apiserver, controller-manager, scheduler, kubelet,
# kube-proxy and kubectl, built together from one module graph
ETCD = "3.6.4"  # go.etcd.io/etcd/server/v3, as k8s.io/kubernetes v1.34.4 requires it
COREDNS = "1.12.4"  # github.com/coredns/coredns
# NetworkPolicy: github.com/cloudnativelabs/kube-router/v2, its firewall alone (iptables and
# ipset; as k3s embeds it). v2.1.0 is the only release the module proxy serves; advisories
# against it concern its dependencies, and here it runs only inside the test cluster's own
# namespaces. sigs.k8s.io/kube-network-policies needs nftables' queue expression, which these
# machines' kernels lack (nft: "No such file or directory" for `queue num N`).
KUBE_ROUTER = "2.1.0"
PAUSE = "3.10"  # the sandbox image's tag, built from k8s.io/kubernetes' build/pause/linux
# Debian bookworm's packages, installed by tests/run.sh: the versions checked here
DEBIAN = {
    "containerd": "1.6.20",
    "runc": "1.1.5",
    "containernetworking-plugins": "1.1.1",  # bridge, host-local, portmap, loopback
    "busybox-static": "1.35.0",  # the workload image: sh, httpd, sleep
    "ipset": "7.17",  # kube-router's firewall
}


def cache_key() -> str:
    """What a cached build is named after: a change of any pin builds again."""
    pins = f"{KUBERNETES} {ETCD} {COREDNS} {KUBE_ROUTER} {PAUSE} {sorted(DEBIAN.items())}"
    return f"k{KUBERNETES}-{hashlib.sha256(pins.encode()).hexdigest()[:8]}"
