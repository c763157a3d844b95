"""Container images built here, with no registry: a root filesystem gathered from this
machine's own binaries (each with the shared libraries `ldd` names), packed as an OCI image
archive that `ctr images import` loads into a node's containerd.

The archive is written byte for byte here (one uncompressed layer, the config, the manifest,
the index): it is small, and it keeps the build free of tools that are not packaged."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

LAYER = "application/vnd.oci.image.layer.v1.tar"
CONFIG = "application/vnd.oci.image.config.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
# Debian is merged-/usr: binaries name their loader as /lib64/..., libraries live in /usr/lib
MERGED = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Rootfs:
    """What goes into the image: files copied from this machine (with whatever symlinks lead
    to them), files written here, and links."""

    entries: dict[str, tarfile.TarInfo | None] = field(default_factory=dict)
    data: dict[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, target in MERGED.items():
            self.link(name, target)
        for d in ("usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "etc", "tmp", "root", "var"):
            self.directory(d)

    def directory(self, path: str, mode: int = 0o755) -> None:
        path = path.strip("/")
        parts = path.split("/")
        for k in range(1, len(parts) + 1):
            sub = "/".join(parts[:k])
            if sub not in self.entries:
                info = tarfile.TarInfo(sub)
                info.type, info.mode = tarfile.DIRTYPE, mode if sub == path else 0o755
                self.entries[sub] = info
        if path == "tmp":
            self.entries[path].mode = 0o1777  # type: ignore[union-attr]

    def link(self, path: str, target: str) -> None:
        if "/" in path.strip("/"):
            self.directory(os.path.dirname(path.strip("/")))
        info = tarfile.TarInfo(path.strip("/"))
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
        self.entries[info.name] = info

    def write(self, path: str, content: bytes, mode: int = 0o644) -> None:
        name = path.strip("/")
        if "/" in name:
            self.directory(os.path.dirname(name))
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(content), mode
        self.entries[name] = info
        self.data[name] = content

    def copy(self, host_path: str, as_path: str | None = None) -> None:
        """A file of this machine at the same place (or `as_path`), following every symlink
        on the way as a symlink of the image too."""
        path = Path(host_path)
        inside = (as_path or host_path).strip("/")
        if inside.split("/")[0] in MERGED:
            inside = MERGED[inside.split("/")[0]] + inside[len(inside.split("/")[0]) :]
        if path.is_symlink():
            target = os.readlink(path)
            self.link(inside, target)
            resolved = (path.parent / target) if not target.startswith("/") else Path(target)
            self.copy(os.path.normpath(resolved))
            return
        real = path.resolve()
        self.write(inside, real.read_bytes(), real.stat().st_mode & 0o7777)

    def binary(self, host_path: str) -> None:
        """An executable and every shared library it loads, with the loader."""
        self.copy(host_path)
        for lib in shared_libraries(host_path):
            self.copy(lib)

    def layer(self) -> bytes:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(self.entries):
                info = self.entries[name]
                assert info is not None
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                content = self.data.get(name)
                tar.addfile(info, io.BytesIO(content) if content is not None else None)
        return out.getvalue()


def shared_libraries(binary: str) -> list[str]:
    """The files `ldd` resolves for `binary` (nothing for a static one)."""
    done = subprocess.run(["ldd", binary], capture_output=True, text=True)
    found = re.findall(r"(/\S+) \(0x", done.stdout)
    return sorted(set(found))


def oci_archive(
    out: Path, name: str, rootfs: Rootfs, entrypoint: list[str], cmd: list[str] | None = None
) -> Path:
    """`rootfs` as an OCI image archive named `name` (registry/repository:tag)."""
    blobs: dict[str, bytes] = {}

    def blob(content: bytes) -> dict[str, object]:
        digest = "sha256:" + hashlib.sha256(content).hexdigest()
        blobs[digest] = content
        return {"digest": digest, "size": len(content)}

    layer = rootfs.layer()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": entrypoint, "Cmd": cmd, "Env": [f"PATH={PATH}"]},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, **blob(json.dumps(config).encode())},
        "layers": [{"mediaType": LAYER, **blob(layer)}],
    }
    tag = name.rsplit(":", 1)[1]
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": MANIFEST,
                **blob(json.dumps(manifest).encode()),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": tag,
                },
            }
        ],
    }
    files = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": json.dumps(index).encode(),
        **{f"blobs/sha256/{d.split(':')[1]}": b for d, b in blobs.items()},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w") as tar:
        for path in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(path)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for path, content in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(content), 0o644
            tar.addfile(info, io.BytesIO(content))
    return out
