"""Build the cluster's parts once, into a cache outside the checkout that a second `up` reuses:
the Go binaries from their modules at the pinned releases (versions.py), the pause binary from
Kubernetes' own source, and the container images (images.py).

k8s.io/kubernetes cannot be `go install`ed (its go.mod replaces its staging modules with
directories its module zip does not hold): a module of our own requires it and points each
staging module at its published release, then builds every command in one graph."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.cluster import versions
from tests.cluster.images import Rootfs, oci_archive

CACHE_ROOT = Path(os.environ.get("KTRACE_CLUSTER_CACHE", "/var/cache/ktrace-cluster"))
KUBE_COMMANDS = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "kubectl",
)
ETCD_MAIN = """package main

import (
\t"os"

\t"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
"""
# The images, by name: what pods and ktrace's --image refer to
PAUSE_IMAGE = f"registry.k8s.io/pause:{versions.PAUSE}"
BUSYBOX_IMAGE = f"ktrace.test/busybox:{versions.DEBIAN['busybox-static']}"
DEBUG_IMAGE = "ktrace.test/debug:1"
COREDNS_IMAGE = f"ktrace.test/coredns:{versions.COREDNS}"
# The debug image: what ktrace runs in it (tcpdump, dig, ip, sh and the node evidence's tools)
DEBUG_TOOLS = (
    "/usr/bin/bash",
    "/usr/bin/timeout",
    "/usr/bin/tcpdump",
    "/usr/bin/dig",
    "/usr/sbin/ip",
    "/usr/bin/nstat",
    "/usr/sbin/xtables-nft-multi",
    "/usr/sbin/nft",
    "/usr/sbin/conntrack",
)
IPTABLES_NAMES = ("iptables", "iptables-save", "ip6tables", "ip6tables-save")


class BuildError(Exception):
    pass


def cache() -> Path:
    return CACHE_ROOT / versions.cache_key()


def bin_dir() -> Path:
    return cache() / "bin"


def image_dir() -> Path:
    return cache() / "images"


def say(text: str) -> None:
    print(f"cluster: {text}", file=sys.stderr, flush=True)


def _run(argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise BuildError(f"{' '.join(argv[:4])}... failed:\n{tail}")


def go_env() -> dict[str, str]:
    return dict(os.environ, CGO_ENABLED="0", GOFLAGS="-buildvcs=false -trimpath")


def build_kubernetes(out: Path) -> None:
    """The six Kubernetes commands and etcd, from one module graph."""
    src = cache() / "src" / "kubernetes"
    src.mkdir(parents=True, exist_ok=True)
    k = versions.KUBERNETES
    env = go_env()
    _run(["go", "mod", "download", "-json", f"k8s.io/kubernetes@v{k}"], cwd=src, env=env)
    done = subprocess.run(
        ["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True, env=env
    )
    upstream = Path(done.stdout.strip()) / f"k8s.io/kubernetes@v{k}" / "go.mod"
    staging = [
        line.split()[0]
        for line in upstream.read_text().splitlines()
        if "=> ./staging/" in line and line.startswith("\t")
    ]
    minor = "0." + k.split(".", 1)[1]
    replaces = "\n".join(f"\t{m} => {m} v{minor}" for m in staging)
    (src / "go.mod").write_text(
        f"module ktrace.test/cluster\n\ngo 1.24.0\n\nrequire k8s.io/kubernetes v{k}\n\n"
        f"replace (\n{replaces}\n)\n"
    )
    (src / "etcd").mkdir(exist_ok=True)
    (src / "etcd" / "main.go").write_text(ETCD_MAIN)
    imports = "\n".join(f'\t_ "k8s.io/kubernetes/cmd/{c}"' for c in KUBE_COMMANDS)
    (src / "tools.go").write_text(f"//go:build tools\n\npackage tools\n\nimport (\n{imports}\n)\n")
    say(f"resolving Kubernetes v{k}'s modules")
    _run(["go", "mod", "tidy"], cwd=src, env=env)
    stamp = " ".join(
        f"-X k8s.io/{p}.{name}={value}"
        for p in ("component-base/version", "client-go/pkg/version")
        for name, value in (
            ("gitVersion", f"v{k}"),
            ("gitMajor", k.split(".")[0]),
            ("gitMinor", k.split(".")[1]),
            ("gitTreeState", "clean"),
        )
    )
    say(f"building Kubernetes v{k} and etcd v{versions.ETCD} (minutes on a cold machine)")
    _run(
        [
            "go", "build", "-ldflags", f"-s -w {stamp}", "-o", str(out) + "/",
            *(f"k8s.io/kubernetes/cmd/{c}" for c in KUBE_COMMANDS), "./etcd",
        ],
        cwd=src,
        env=env,
    )  # fmt: skip


def build_addons(out: Path) -> None:
    """CoreDNS and kube-router: modules that install as they are."""
    env = dict(go_env(), GOBIN=str(out))
    say(f"building CoreDNS v{versions.COREDNS}")
    _run(["go", "install", "-ldflags", "-s -w", f"github.com/coredns/coredns@v{versions.COREDNS}"],
         env=env)  # fmt: skip
    say(f"building kube-router v{versions.KUBE_ROUTER}")
    _run(
        ["go", "install", "-ldflags", "-s -w",
         f"github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@v{versions.KUBE_ROUTER}"],
        env=env,
    )  # fmt: skip


def build_pause(out: Path) -> None:
    """The sandbox's process, from the Kubernetes source the module cache holds."""
    done = subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True)
    source = (
        Path(done.stdout.strip())
        / f"k8s.io/kubernetes@v{versions.KUBERNETES}/build/pause/linux/pause.c"
    )
    _run(["gcc", "-Os", "-static", f"-DVERSION=v{versions.PAUSE}", "-o", str(out / "pause"),
          str(source)])  # fmt: skip


def _busybox(root: Rootfs) -> None:
    root.copy("/usr/bin/busybox", "/usr/bin/busybox")
    applets = subprocess.run(
        ["/usr/bin/busybox", "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        if applet != "busybox":
            root.link(f"usr/bin/{applet}", "busybox")
    root.write("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n")
    root.write("etc/group", b"root:x:0:\nnogroup:x:65534:\n")


def build_images(binaries: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    pause = Rootfs()
    pause.copy(str(binaries / "pause"), "/pause")
    oci_archive(out / "pause.tar", PAUSE_IMAGE, pause, ["/pause"])

    box = Rootfs()
    _busybox(box)
    oci_archive(out / "busybox.tar", BUSYBOX_IMAGE, box, ["/bin/sh"])

    debug = Rootfs()
    _busybox(debug)
    for tool in DEBUG_TOOLS:
        debug.binary(tool)
    for name in IPTABLES_NAMES:
        debug.link(f"usr/sbin/{name}", "xtables-nft-multi")
    extensions = Path("/usr/lib/x86_64-linux-gnu/xtables")
    for ext in sorted(extensions.glob("*.so")):
        debug.binary(str(ext))
    # Debian's tcpdump gives up root for this user once its capture is open
    debug.write(
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\ntcpdump:x:104:108::/nonexistent:/usr/sbin/nologin\n"
        b"nobody:x:65534:65534::/:/bin/sh\n",
    )
    debug.write("etc/group", b"root:x:0:\ntcpdump:x:108:\nnogroup:x:65534:\n")
    for etc in ("/etc/iproute2", "/etc/protocols", "/etc/services"):
        for f in [Path(etc)] if Path(etc).is_file() else sorted(Path(etc).glob("**/*")):
            if f.is_file():
                debug.copy(str(f))
    oci_archive(out / "debug.tar", DEBUG_IMAGE, debug, ["/bin/sh"])

    coredns = Rootfs()
    coredns.copy(str(binaries / "coredns"), "/coredns")
    oci_archive(out / "coredns.tar", COREDNS_IMAGE, coredns, ["/coredns"])


def build() -> Path:
    """Everything, or what a previous build left undone; returns the binaries' directory."""
    if shutil.which("go") is None:
        raise BuildError("the real cluster is built with Go, which is not installed")
    top = cache()
    binaries = bin_dir()
    binaries.mkdir(parents=True, exist_ok=True)
    steps = (
        ("kubernetes", lambda: build_kubernetes(binaries)),
        ("addons", lambda: build_addons(binaries)),
        ("pause", lambda: build_pause(binaries)),
        ("images", lambda: build_images(binaries, image_dir())),
    )
    done_file = top / "built.json"
    done: list[str] = json.loads(done_file.read_text()) if done_file.exists() else []
    for name, step in steps:
        if name not in done:
            step()
            done.append(name)
            done_file.write_text(json.dumps(done))
    return binaries
