"""What the user pointed ktrace at, as capture files: plain pcap/pcapng files, directories of
them, bundles (their manifest says which point each file is) and bundles packed as .tar.gz."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ktrace.errors import CaptureFileError
from ktrace.model import Point

if TYPE_CHECKING:
    import tarfile

    from ktrace.bundle.inventory import Inventory
    from ktrace.bundle.manifest import Manifest
    from ktrace.bundle.node_evidence import NodeEvidence

CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".dmp", ".pcap.gz", ".pcapng.gz")


@dataclass(frozen=True)
class Inputs:
    """What the command line named, resolved: capture files, points, inventory."""

    paths: tuple[Path, ...]  # as given (a .tar.gz as its unpacked directory)
    files: tuple[Path, ...]
    declared: dict[Path, Point]  # from bundle manifests
    inventory: Inventory | None
    notes: tuple[str, ...] = ()  # a bundle cut short, or still being written
    nodes: dict[str, NodeEvidence] = field(default_factory=dict)  # from bundles' nodes/

    def current_files(self) -> list[Path]:
        """The capture files as they are now: a live bundle gains its points as they start."""
        return list(read_inputs(list(self.paths)).files)


def unpack_bundle(archive: Path) -> tuple[Path, str | None]:
    """A .tar.gz bundle, unpacked into a private temporary directory removed at exit, and a
    note when the archive ends early: what it holds up to there is kept (a point file cut in
    the middle is a truncated capture, which the readers take as far as it goes)."""
    import tarfile  # here: capture files alone, the common input, never need it

    root = Path(tempfile.mkdtemp(prefix="ktrace-bundle-"))  # created 0700
    atexit.register(shutil.rmtree, root, True)
    try:
        with tarfile.open(archive) as tar:
            cut = _extract_readable(tar, root)
    except (EOFError, zlib.error) as exc:
        raise CaptureFileError(
            f"{archive}: the archive ends ({exc}) before any capture file"
        ) from None
    except (tarfile.TarError, OSError) as exc:
        raise CaptureFileError(f"{archive}: not a readable bundle archive ({exc})") from None
    # a bundle's root: where its manifest is or, the archive cut before it, its points/
    found = [m.parent for m in root.rglob("manifest.json")] or [
        d.parent for d in root.rglob("points") if d.is_dir()
    ]
    top = found[0] if len(found) == 1 else root
    if cut and not any(f.name.lower().endswith(CAPTURE_SUFFIXES) for f in top.rglob("*")):
        raise CaptureFileError(f"{archive}: the archive ends ({cut}) before any capture file")
    note = f"{archive}: the archive ends early ({cut}): analysed what it holds" if cut else None
    return top, note


def _extract_readable(tar: tarfile.TarFile, root: Path) -> str | None:
    """Regular files and directories of `tar` under `root` (names checked as tarfile's 'data'
    filter does: nothing outside it, no links or devices), until the archive ends; why it
    ended early, or None."""
    import tarfile

    try:
        for member in tar:
            try:
                safe = tarfile.data_filter(member, str(root))
            except tarfile.FilterError:
                continue
            target = root / safe.name
            if safe.isdir():
                target.mkdir(parents=True, exist_ok=True, mode=0o700)
            elif safe.isfile():
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                source = tar.extractfile(member)
                if source is None:
                    continue
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as out:
                    try:
                        shutil.copyfileobj(source, out)
                    except (EOFError, tarfile.ReadError, zlib.error) as exc:
                        return f"{safe.name} cut: {exc}"
    except (EOFError, tarfile.ReadError, zlib.error) as exc:
        return str(exc)
    return None


def _status_note(bundle: Path, manifest: Manifest) -> str | None:
    from ktrace.bundle.manifest import CaptureStatus

    if manifest.status == CaptureStatus.INTERRUPTED:
        return f"{bundle}: the capture was cut short: {manifest.reason or 'no reason given'}"
    if manifest.status == CaptureStatus.CAPTURING:
        return f"{bundle}: the capture is still running, or was killed before it ended"
    return None


def _declared_points(bundle: Path, manifest: Manifest) -> tuple[dict[Path, Point], list[str]]:
    """The points whose files are there, and a note for each the manifest lists in vain."""
    out = {}
    missing = []
    for spec in manifest.points:
        path = bundle / spec.file
        if not path.exists():
            missing.append(f"{bundle}: point {spec.id}'s file {spec.file} is missing: left out")
            continue
        out[path] = Point(
            spec.id,
            str(path),
            spec.interface,
            spec.linktype or 1,
            spec.kind,
            spec.node,
            spec.namespace,
            spec.pod,
            window=spec.window,
            kernel_drops=spec.kernel_drops,
        )
    return out, missing


def read_inputs(inputs: list[Path]) -> Inputs:
    """Bundles contribute their declared points and inventory; other inputs are files. What
    reads a bundle is imported with the first directory: capture files alone never need it.
    A damaged part of a bundle (manifest, inventory, a point's file) is a note, not the end:
    the rest is still read."""
    paths: list[Path] = []
    declared: dict[Path, Point] = {}
    inventory: Inventory | None = None
    plain: list[Path] = []
    notes: list[str] = []
    nodes: dict[str, NodeEvidence] = {}
    for p in inputs:
        if p.is_file() and p.name.endswith((".tar.gz", ".tgz")):
            p, cut = unpack_bundle(p)
            notes.extend([cut] if cut else [])
        paths.append(p)
        if not p.is_dir():
            plain.append(p)
            continue
        from ktrace.bundle.manifest import read_inventory, read_manifest
        from ktrace.bundle.node_evidence import read_nodes

        try:
            manifest = read_manifest(p)
        except CaptureFileError as exc:
            notes.append(f"{exc.message}: its capture files read as plain files")
            manifest = None
        if manifest is None:
            plain.append(p)
            continue
        note = _status_note(p, manifest)
        if note:
            notes.append(note)
        points, missing = _declared_points(p, manifest)
        declared.update(points)
        notes.extend(missing)
        try:
            read = read_inventory(p)
        except CaptureFileError as exc:
            notes.append(exc.message)
        else:
            inventory = read or inventory
            if read is not None and read.unreadable:
                entries = "an entry" if read.unreadable == 1 else f"{read.unreadable} entries"
                notes.append(
                    f"{p}: {entries} of inventory.json not as ktrace writes them: left out, "
                    "their addresses shown without names"
                )
        nodes.update(read_nodes(p))
    if not declared and not plain:
        raise CaptureFileError(
            f"{inputs[0]}: none of the bundle's capture files is there",
            "analyze the pcap files you have directly",
        )
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
