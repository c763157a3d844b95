"""What the user pointed ktrace at, as capture files: plain pcap/pcapng files, directories of
them, bundles (their manifest says which point each file is) and bundles packed as .tar.gz."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ktrace.errors import CaptureFileError
from ktrace.model import Point

if TYPE_CHECKING:
    from ktrace.bundle.manifest import Manifest
    from ktrace.bundle.node_evidence import NodeEvidence

CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".dmp", ".pcap.gz", ".pcapng.gz")


@dataclass(frozen=True)
class Inputs:
    """What the command line named, resolved: capture files, points, inventory."""

    paths: tuple[Path, ...]  # as given (a .tar.gz as its unpacked directory)
    files: tuple[Path, ...]
    declared: dict[Path, Point]  # from bundle manifests
    inventory: dict[str, Any] | None
    notes: tuple[str, ...] = ()  # a bundle cut short, or still being written
    nodes: dict[str, NodeEvidence] = field(default_factory=dict)  # from bundles' nodes/

    def current_files(self) -> list[Path]:
        """The capture files as they are now: a live bundle gains its points as they start."""
        return list(read_inputs(list(self.paths)).files)


def unpack_bundle(archive: Path) -> Path:
    """A .tar.gz bundle, unpacked into a private temporary directory removed at exit."""
    import tarfile  # here: capture files alone, the common input, never need it

    root = Path(tempfile.mkdtemp(prefix="ktrace-bundle-"))  # created 0700
    atexit.register(shutil.rmtree, root, True)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")  # no absolute paths, links out, devices
    except (tarfile.TarError, OSError) as exc:
        raise CaptureFileError(f"{archive}: not a readable bundle archive ({exc})") from None
    found = [m.parent for m in root.rglob("manifest.json")]
    return found[0] if len(found) == 1 else root


def _status_note(bundle: Path, manifest: Manifest) -> str | None:
    from ktrace.bundle.manifest import CaptureStatus

    if manifest.status == CaptureStatus.INTERRUPTED:
        return f"{bundle}: the capture was cut short: {manifest.reason or 'no reason given'}"
    if manifest.status == CaptureStatus.CAPTURING:
        return f"{bundle}: the capture is still running, or was killed before it ended"
    return None


def _declared_points(bundle: Path, manifest: Manifest) -> dict[Path, Point]:
    out = {}
    for spec in manifest.points:
        path = bundle / spec.file
        if not path.exists():
            raise CaptureFileError(f"{bundle}: the manifest lists {spec.file}, which is missing")
        out[path] = Point(
            spec.id,
            str(path),
            spec.interface,
            spec.linktype or 1,
            spec.kind,
            spec.node,
            spec.namespace,
            spec.pod,
        )
    return out


def read_inputs(inputs: list[Path]) -> Inputs:
    """Bundles contribute their declared points and inventory; other inputs are files. What
    reads a bundle is imported with the first directory: capture files alone never need it."""
    paths: list[Path] = []
    declared: dict[Path, Point] = {}
    inventory: dict[str, Any] | None = None
    plain: list[Path] = []
    notes: list[str] = []
    nodes: dict[str, NodeEvidence] = {}
    for p in inputs:
        if p.is_file() and p.name.endswith((".tar.gz", ".tgz")):
            p = unpack_bundle(p)
        paths.append(p)
        if not p.is_dir():
            plain.append(p)
            continue
        from ktrace.bundle.manifest import read_inventory, read_manifest
        from ktrace.bundle.node_evidence import read_nodes

        manifest = read_manifest(p)
        if manifest is None:
            plain.append(p)
            continue
        note = _status_note(p, manifest)
        if note:
            notes.append(note)
        declared.update(_declared_points(p, manifest))
        inventory = read_inventory(p) or inventory
        nodes.update(read_nodes(p))
    files = [*declared, *capture_files(plain)]
    return Inputs(tuple(paths), tuple(files), declared, inventory, tuple(notes), nodes)


def capture_files(inputs: list[Path]) -> list[Path]:
    """Files as given; directories contribute their capture files (a bundle: its points/)."""
    out: list[Path] = []
    for p in inputs:
        if p.is_dir():
            root = p / "points" if (p / "points").is_dir() else p
            found = sorted(
                f
                for f in root.iterdir()
                if f.is_file() and f.name.lower().endswith(CAPTURE_SUFFIXES)
            )
            if not found:
                raise CaptureFileError(
                    f"{p}: directory holds no capture files",
                    "expected *.pcap or *.pcapng files, or a ktrace bundle",
                )
            out.extend(found)
        elif not p.exists():
            raise CaptureFileError(f"{p}: no such file or directory")
        else:
            out.append(p)
    return out
