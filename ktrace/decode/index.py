"""Build the packet index of one or more capture files: a generator of progress that the CLI
drains and the TUI runs in a worker, sharded across threads for large files."""

from __future__ import annotations

import ipaddress
import mmap
import threading
from collections import deque
from collections.abc import Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ktrace.chunking import bincount, cores
from ktrace.decode.batch import MALFORMED_IP, DecodedBatch, decode_batch
from ktrace.decode.columns import SCHEMA, PacketColumns, Quotes
from ktrace.decode.tunnel import Tunnel
from ktrace.errors import Cancelled
from ktrace.model import PacketRef, Point
from ktrace.pcap.pcapng import LayoutChanged, Pcapng
from ktrace.pcap.reader import CaptureFormat, check_linktypes, open_capture, reader_over
from ktrace.pcap.source import MappedFile

# File bytes walked per batch: bounds the header windows and decoding temporaries each thread
# holds. 1 GB: 8 MB batches 85 B/packet at the end of indexing, 16 MB 97 and 40-60 ms faster
# on two cores (half the batches' fixed costs, paid holding the GIL); 32 MB went over the
# whole analysis's peak (131 against 122 B/packet), which is reached after indexing.
BATCH = 16 << 20
# Files smaller than this are not worth splitting across threads.
SHARD_MIN_BYTES = 48 << 20
SHARDS_PER_WORKER = 4
# A shard of about this many file bytes: the batches of a few of them are in memory at once
# (measured on 1 GB: 16 MB shards 124 B/packet at the end of indexing, 128 MB 147).
SHARD_BYTES = 32 << 20


@dataclass
class CaptureFile:
    """A file being indexed: its format and size, the points it feeds, its reader."""

    path: Path
    format: str
    size: int
    points: list[int]  # global point ids, one per interface of the file
    first_row: int = 0  # index row of the file's first packet
    shards: int = 0  # parts walked in parallel (0: one sequential walk)
    warnings: list[str] = field(default_factory=list)
    drops: dict[int, int] = field(default_factory=dict)  # point id -> kernel drops
    windows: dict[int, tuple[int, int]] = field(default_factory=dict)  # point id -> capturing
    reader: CaptureFormat | None = field(default=None, repr=False)


@dataclass(frozen=True)
class IndexProgress:
    """How far indexing has got: bytes of the current file, packets in all."""

    file: Path
    done: int  # bytes of this file walked
    total: int
    packets: int  # packets indexed so far, all files
    points: tuple[Point, ...] = ()  # known so far
    point_packets: tuple[int, ...] = ()  # per point so far
    point_bytes: tuple[int, ...] = ()


@dataclass
class PacketIndex:
    """Every packet of every file: columns plus the tables the columns point into."""

    columns: PacketColumns
    points: list[Point]
    files: list[CaptureFile]
    v6: list[bytes]
    tunnels: list[Tunnel]
    quotes: Quotes
    # per tunnel: packets it carried nested in another tunnel (the column holds the outermost)
    tunnel_nested: list[int] = field(default_factory=list)
    undecoded: dict[str, int] = field(default_factory=dict)  # encapsulation -> packets

    def __len__(self) -> int:
        return len(self.columns)

    def tunnel_packets(self) -> np.ndarray:
        """Per tunnel (in `tunnels` order): the packets it carried, at any depth."""
        if not self.tunnels:  # nothing to count: no pass over every packet
            return np.zeros(0, np.int64)
        counts = bincount(self.columns.tunnel, len(self.tunnels) + 1)[1:]
        nested = np.zeros(len(self.tunnels), np.int64)
        nested[: len(self.tunnel_nested)] = self.tunnel_nested
        return counts.astype(np.int64) + nested

    @property
    def warnings(self) -> list[str]:
        said = []
        for name, n in sorted(self.undecoded.items(), key=lambda kv: -kv[1]):
            packets = f"{n:,} packet{'s' if n != 1 else ''}"
            if name == MALFORMED_IP:
                said.append(
                    f"{packets} whose IP length fields contradict the packet (malformed): "
                    "nothing past their IP header is decoded"
                )
            else:
                said.append(
                    f"{packets} inside {name}: ktrace does not look inside, so the "
                    "conversations they carry are not in the tables"
                )
        return [f"{f.path}: {w}" for f in self.files for w in f.warnings] + said

    def __post_init__(self) -> None:
        self._names: dict[tuple[int, int], str] = {}
        self._file_of = {p: f for f in self.files for p in f.points}
        self._v6_ids: dict[bytes, int] | None = None
        self._forgetting: threading.Thread | None = None

    def address(self, l3: int, value: int) -> str:
        """An address column value as text (IPv6 values are ids into the v6 table)."""
        key = (l3, value)
        name = self._names.get(key)
        if name is None:
            if l3 == 6:
                name = str(ipaddress.IPv6Address(self.v6[value]))
            else:
                name = str(ipaddress.IPv4Address(int(value)))
            self._names[key] = name
        return name

    def value_of(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int | None:
        """The inverse of `address`: the column value of an address (IPv6: its id in the v6
        table, None when no packet has it)."""
        if addr.version == 4:
            return int(addr)
        if self._v6_ids is None:
            self._v6_ids = {a: k for k, a in enumerate(self.v6)}
        return self._v6_ids.get(addr.packed)

    def file_of(self, point: int) -> CaptureFile:
        return self._file_of[point]

    def capture_window(self, point: int) -> tuple[int, int] | None:
        """When the point was capturing (ns, its own clock): as its bundle declares it, else
        as its pcapng statistics say; None when nothing says (a plain pcap)."""
        declared = self.points[point].window
        return declared if declared is not None else self.file_of(point).windows.get(point)

    def kernel_drops(self, point: int) -> int | None:
        """What the point's kernel said it dropped: pcapng statistics, else the bundle's."""
        found = self.file_of(point).drops.get(point)
        return found if found is not None else self.points[point].kernel_drops

    def ref(self, row: int) -> PacketRef:
        """The packet as a user finds it: its point and its number in its file (1-based)."""
        point = int(self.columns.point[row])
        return PacketRef(self.points[point].id, row - self.file_of(point).first_row + 1)

    def mapped(self, point: int) -> mmap.mmap:
        """The point's file as mapped memory (open while the index is)."""
        reader = self.file_of(point).reader
        if reader is None:
            raise ValueError("the packet index is closed")
        return reader.mf.mm

    def packet_bytes(self, row: int) -> bytes:
        """The captured bytes of one packet, read by offset."""
        start = int(self.columns.offset[row])
        mm = self.mapped(int(self.columns.point[row]))
        return mm[start : start + int(self.columns.caplen[row])]

    def payload(self, row: int, limit: int = 65535) -> bytes:
        c = self.columns
        start = int(c.offset[row]) + int(c.payoff[row])
        size = min(int(c.paylen[row]), int(c.caplen[row]) - int(c.payoff[row]), limit)
        return self.mapped(int(c.point[row]))[start : start + max(size, 0)]

    def forget_pages(self) -> None:
        """On a thread: the captures' pages dropped from the process's page tables, for
        when the passes over every packet are done. Reads after it map what they read again;
        close() waits for it (the kernel's work that unmapping would have done: 20 ms a GB)."""
        if self._forgetting is None:
            files = [f.reader.mf for f in self.files if f.reader is not None]

            def forget() -> None:
                for mf in files:
                    mf.forget()

            self._forgetting = threading.Thread(target=forget, name="ktrace-forget", daemon=True)
            self._forgetting.start()

    def close(self) -> None:
        if self._forgetting is not None:
            self._forgetting.join()
        close_files(self.files)

    def __enter__(self) -> PacketIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def close_files(files: list[CaptureFile]) -> None:
    for f in files:
        if f.reader is not None:
            f.reader.mf.close()
            f.reader = None


def _decode_all(
    fmt: CaptureFormat, start: int, stop: int, base: int, cancel: threading.Event | None
) -> Iterator[DecodedBatch | int]:
    """Decoded batches, each followed by the file offset reached. Interface k feeds point
    base + k; pcapng may declare interfaces as it goes, so the lists are re-read per batch."""
    for batch in fmt.walk(start, stop, BATCH):
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        linktypes = [i.linktype for i in fmt.interfaces]
        points = list(range(base, base + len(linktypes)))
        yield decode_batch(batch, linktypes, points, fmt.mf.view)
        yield batch.end


@dataclass(frozen=True)
class ShardResult:
    """What one worker read of its part of a file: the batches and where it stopped."""

    start: int  # where the shard's walk began (a guess, unless it is the first shard)
    end: int  # where it really ended; -1 when the shard could not be placed or was stopped
    batches: list[DecodedBatch]
    warnings: list[str]


def _shard(
    mf: MappedFile, start: int, stop: int, base: int, first: bool, halt: threading.Event
) -> ShardResult:
    """Worker thread: walk [start, stop) of a file (start is a guess after the first shard)
    with a reader of its own over the shared mapping; `halt` stops it between batches."""
    fmt = reader_over(mf)
    try:
        if not first:
            if isinstance(fmt, Pcapng):
                fmt.frozen_layout = True
            found = fmt.sync(start)
            if found is None:
                return ShardResult(start, -1, [], [])
            start = found
        batches, end = [], start
        for item in _decode_all(fmt, start, stop, base, halt):
            if isinstance(item, int):
                end = item
            else:
                batches.append(item)
        return ShardResult(start, end, batches, fmt.warnings)
    except (LayoutChanged, Cancelled):
        return ShardResult(start, -1, [], [])


class _Growing:
    """Columns appended batch by batch to arrays grown in place. Large blocks are mapped
    memory that realloc moves with mremap, without copying: the index never exists twice, as
    it would while concatenating its parts."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}
        self.n = 0
        self._reset()

    def _reset(self) -> None:
        self.arrays = {name: np.empty(0, dtype) for name, dtype in SCHEMA.items()}
        self.n = 0

    def reserve(self, n: int) -> None:
        """Room for at least `n` packets in all, taken with a quarter more, and growing by
        half at least: an estimate that falls short grows the arrays again, which copies
        those below the allocator's mapping threshold and zeroes the new room (measured:
        eight small growths, 0.13 s on 1 GB), while room never written costs no memory. Room
        taken before anything is appended is not zeroed first, as a resize would."""
        room = len(self.arrays["offset"])
        if n <= room:
            return
        n = max(n + n // 4, room + room // 2)
        if self.n == 0:
            self.arrays = {name: np.empty(n, a.dtype) for name, a in self.arrays.items()}
            return
        for a in self.arrays.values():
            a.resize(n, refcheck=False)  # no views of these exist before take()

    def append(self, cols: PacketColumns) -> None:
        need = self.n + len(cols)
        if need > len(self.arrays["offset"]):
            self.reserve(max(need, 1 << 16))
        for name, a in self.arrays.items():
            a[self.n : need] = getattr(cols, name)
        self.n = need

    def take(self) -> PacketColumns:
        """The columns, trimmed; this store starts again empty."""
        for a in self.arrays.values():
            a.resize(self.n, refcheck=False)
        columns = PacketColumns(**self.arrays)
        self._reset()
        return columns


class IndexBuilder:
    """Accumulates decoded batches into one index, merging per-batch address/tunnel tables."""

    def __init__(self) -> None:
        self.parts = _Growing()
        self.quotes: list[Quotes] = []
        self.v6: dict[bytes, int] = {}
        self.tunnels: dict[Tunnel, int] = {}
        self.nested: dict[int, int] = {}  # tunnel id -> packets carried inside another tunnel
        self.undecoded: dict[str, int] = {}
        self.packets = 0
        self.points: list[Point] = []
        self.files: list[CaptureFile] = []
        self._point_packets = np.zeros(0, np.int64)
        self._point_bytes = np.zeros(0, np.int64)

    def progress(self, path: Path, done: int, total: int) -> IndexProgress:
        n = len(self.points)
        packets = np.zeros(n, np.int64)
        sizes = np.zeros(n, np.int64)
        m = min(n, len(self._point_packets))
        packets[:m], sizes[:m] = self._point_packets[:m], self._point_bytes[:m]
        return IndexProgress(
            path,
            done,
            total,
            self.packets,
            tuple(self.points),
            tuple(packets.tolist()),
            tuple(sizes.tolist()),
        )

    def _count(self, cols: PacketColumns) -> None:
        if not len(cols):
            return
        low, high = int(cols.point.min()), int(cols.point.max())
        if low == high and high < len(self._point_packets):  # a batch of one point: the usual
            self._point_packets[low] += len(cols)
            self._point_bytes[low] += int(cols.wirelen.sum(dtype=np.int64))
            return
        n = max(high + 1, len(self._point_packets))
        packets = np.bincount(cols.point, minlength=n)
        sizes = np.bincount(cols.point, weights=cols.wirelen, minlength=n).astype(np.int64)
        packets[: len(self._point_packets)] += self._point_packets
        sizes[: len(self._point_bytes)] += self._point_bytes
        self._point_packets, self._point_bytes = packets, sizes

    def close(self) -> None:
        close_files(self.files)

    def add(self, item: DecodedBatch) -> None:
        cols = item.columns
        if item.v6:
            lut = np.array([self.v6.setdefault(a, len(self.v6)) for a in item.v6], np.uint32)
            six = cols.l3 == 6
            cols.src[six] = lut[cols.src[six]]
            cols.dst[six] = lut[cols.dst[six]]
        if item.tunnels:
            lut16 = np.array(
                [0] + [self.tunnels.setdefault(t, len(self.tunnels) + 1) for t in item.tunnels],
                np.uint16,
            )
            cols.tunnel[:] = lut16[cols.tunnel]
            for k, n in enumerate(item.nested):
                if n:
                    tid = int(lut16[k + 1])
                    self.nested[tid] = self.nested.get(tid, 0) + n
        for name, n in item.undecoded.items():
            self.undecoded[name] = self.undecoded.get(name, 0) + n
        if len(item.quotes.row):
            q = item.quotes
            src, dst = q.src.copy(), q.dst.copy()
            if item.v6:  # quoted IPv6 addresses are ids into the batch's table too
                six = q.l3 == 6
                src[six], dst[six] = lut[src[six]], lut[dst[six]]
            self.quotes.append(
                Quotes(q.row + self.packets, q.l3, q.proto, src, dst, q.sport, q.dport)
            )
        self.parts.append(cols)
        self.packets += len(cols)
        self._count(cols)

    def merged(self) -> DecodedBatch:
        """Everything added as one batch, with this builder's own tables (once: the columns
        are handed over)."""
        quotes = Quotes.empty()
        if self.quotes:
            fields = Quotes.__dataclass_fields__
            quotes = Quotes(*(np.concatenate([getattr(q, f) for q in self.quotes]) for f in fields))
        columns = self.parts.take()
        nested = [self.nested.get(k + 1, 0) for k in range(len(self.tunnels))]
        return DecodedBatch(
            columns, list(self.v6), list(self.tunnels), quotes, nested, dict(self.undecoded)
        )

    def result(self) -> PacketIndex:
        part = self.merged()
        return PacketIndex(
            part.columns,
            list(self.points),
            list(self.files),
            part.v6,
            part.tunnels,
            part.quotes,
            part.nested,
            part.undecoded,
        )


def _stem(path: Path) -> str:
    return path.name.split(".")[0] or path.name


def _point_names(path: Path, fmt: CaptureFormat) -> list[str]:
    stem = _stem(path)
    if len(fmt.interfaces) == 1:
        return [stem]
    return [f"{stem}:{i.name or k}" for k, i in enumerate(fmt.interfaces)]


def scan(
    paths: list[Path],
    builder: IndexBuilder,
    cancel: threading.Event | None = None,
    workers: int | None = None,
    declared: dict[Path, Point] | None = None,
) -> Iterator[IndexProgress]:
    """Index `paths` into `builder`, which gains their points and files; yields progress.

    `declared` gives the point a file is (from a bundle's manifest): its id, kind and place.

    Large files are split into shards walked by a process pool; a shard's start is a guess
    that the previous shard's walk confirms, and any doubt falls back to a sequential walk.
    """
    workers = workers if workers is not None else default_workers()
    points, files = builder.points, builder.files
    for path in paths:
        fmt = open_capture(path)
        check_linktypes(fmt)
        base = len(points)
        names = _point_names(path, fmt)
        for k, (name, iface) in enumerate(zip(names, fmt.interfaces, strict=True)):
            point = Point(
                name,
                str(path),
                iface.name or iface.description or (f"if{k}" if len(names) > 1 else ""),
                iface.linktype,
            )
            known = (declared or {}).get(path)
            if known is not None and len(names) == 1:
                point = replace(
                    known,
                    file=str(path),
                    linktype=iface.linktype,
                    interface=known.interface or point.interface,
                )
            points.append(point)
        info = CaptureFile(
            path, fmt.kind, fmt.mf.size, list(range(base, len(points))), builder.packets, reader=fmt
        )
        files.append(info)
        size = fmt.mf.size
        resume: int | None = fmt.first
        if workers > 1 and size >= SHARD_MIN_BYTES and fmt.mf.compressed is False:
            resume = yield from _scan_sharded(fmt, path, base, builder, cancel, workers, info)
        if resume is not None:
            for item in _decode_all(fmt, resume, size, base, cancel):
                if isinstance(item, int):
                    yield builder.progress(path, item, size)
                else:
                    builder.add(item)
        # pcapng may define interfaces after the first packet: give each its point.
        for k in range(len(info.points), len(fmt.interfaces)):
            iface = fmt.interfaces[k]
            points.append(
                Point(
                    f"{_stem(path)}:{iface.name or k}",
                    str(path),
                    iface.name,
                    iface.linktype,
                )
            )
            info.points.append(len(points) - 1)
        info.warnings = fmt.warnings
        info.drops = {info.points[k]: v for k, v in fmt.drops.items() if k < len(info.points)}
        info.windows = {info.points[k]: v for k, v in fmt.windows.items() if k < len(info.points)}
        yield builder.progress(path, size, size)


def _scan_sharded(
    fmt: CaptureFormat,
    path: Path,
    base: int,
    builder: IndexBuilder,
    cancel: threading.Event | None,
    workers: int,
    info: CaptureFile,
) -> Generator[IndexProgress, None, int | None]:
    """Returns the offset to continue sequentially from, or None when the shards covered all.

    Threads, not processes: the walk and the C decoder run without the GIL, and the pages
    they map are the ones every later read of payloads (DNS, HTTP) finds mapped. At most one
    shard per worker waits to be taken in, so the batches in flight stay a few tens of MB."""
    size = fmt.mf.size
    count = max(workers * SHARDS_PER_WORKER, -(-(size - fmt.first) // SHARD_BYTES))
    bounds = [fmt.first + (size - fmt.first) * k // count for k in range(count)] + [size]
    expected = fmt.first
    first_packet = builder.packets
    halt = threading.Event()
    pending: deque[Future[ShardResult]] = deque()
    with ThreadPoolExecutor(workers) as pool:

        def submit(k: int) -> None:
            pending.append(
                pool.submit(_shard, fmt.mf, bounds[k], bounds[k + 1], base, k == 0, halt)
            )

        try:
            for k in range(min(count, workers + 1)):
                submit(k)
            queued = len(pending)
            while pending:
                shard = pending.popleft().result()
                if queued < count:
                    submit(queued)
                    queued += 1
                if cancel is not None and cancel.is_set():
                    raise Cancelled()
                if shard.end < 0 or shard.start != expected:
                    return expected
                taken = builder.packets + sum(len(b.columns) for b in shard.batches)
                if shard.end > fmt.first:
                    # Room for the rest at the packet size seen so far, which a file's first
                    # shard can misjudge (bulk transfer first, DNS later): each growth after
                    # it copies and zeroes (touches) the arrays.
                    rate = (taken - first_packet) / (shard.end - fmt.first)
                    builder.parts.reserve(taken + int(rate * (size - shard.end) * 1.05))
                for batch in shard.batches:
                    builder.add(batch)
                expected = shard.end
                info.shards += 1
                fmt.warnings.extend(w for w in shard.warnings if w not in fmt.warnings)
                yield builder.progress(path, shard.end, size)
        finally:
            halt.set()
            for future in pending:
                future.cancel()
    return None if expected >= size else expected


def default_workers(reserve: int = 0) -> int:
    """Every core but `reserve`, at most 4. The terminal UI reserves one: keys answered while
    indexing matter more."""
    return cores(reserve)


def build_index(
    paths: list[Path],
    cancel: threading.Event | None = None,
    workers: int | None = None,
    declared: dict[Path, Point] | None = None,
) -> PacketIndex:
    builder = IndexBuilder()
    try:
        for _ in scan(paths, builder, cancel, workers, declared):
            pass
    except BaseException:
        builder.close()
        raise
    return builder.result()
