"""Command line: parse arguments into calls on the core, and the one place errors are printed.

`kubectl ktrace ...` runs this same entry point through the `kubectl-ktrace` script.
"""

from __future__ import annotations

import argparse
import atexit
import inspect
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from ktrace import __version__
from ktrace.errors import ExitStatus, KtraceError, UsageError

# Before numpy loads OpenBLAS: ktrace never multiplies matrices, and OpenBLAS's threads spin
# after they start, on the cores the indexing threads and the DNS stage run on (the whole
# analyze on 1 GB: a tenth of a CPU second spent, 0.03 s of the median run). An explicit
# setting is left as it is.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

if TYPE_CHECKING:
    from ktrace.analysis.result import Result
    from ktrace.kube.api import KubeFlags
    from ktrace.model import Point


def _prog() -> str:
    name = os.path.basename(sys.argv[0] or "ktrace")
    return "kubectl ktrace" if name.startswith("kubectl-") else "ktrace"


def cmd_analyze(args: argparse.Namespace) -> int:
    from ktrace.report.text import render_report

    result = _analyze_with_progress(args.inputs, quiet=args.quiet)
    with _captures_closing(result):
        if args.output == "json":
            # pieces of a few MB encoded by orjson, compact: json.dump's small writes and
            # pure-Python encoding cost seconds on a large capture; jq indents for a human
            from ktrace.report.json_report import json_chunks

            sys.stdout.flush()
            sys.stdout.buffer.writelines(json_chunks(result))
            sys.stdout.buffer.write(b"\n")
        else:
            sys.stdout.write(render_report(result, args.limit))
    # the text report has its Warnings section: said again only where it is not in sight
    if args.output == "json" or not sys.stdout.isatty():
        for warning in result.warnings:
            print(f"{_prog()}: warning: {warning}", file=sys.stderr)
    return ExitStatus.OK


@contextmanager
def _captures_closing(result: Result) -> Iterator[None]:
    """The captures' mappings closed on another thread while the output is made: nothing
    after the analysis reads a packet again, and what unmapping still has to do (most of its
    pages left the page tables during the analysis: PacketIndex.forget_pages) runs without
    the GIL. A mapping something still views is left to the exit."""

    def close() -> None:
        with suppress(BufferError):
            result.analysis.index.close()

    closing = threading.Thread(target=close, name="ktrace-unmap")
    closing.start()
    try:
        yield
    finally:
        closing.join()


def _analyze_with_progress(inputs: list[Path], quiet: bool) -> Result:
    """The pipeline drained, with a progress line on a terminal's stderr past a second, and
    the memory of each stage handed back before the next."""
    from ktrace.analysis.pipeline import Analysing, Indexed, Step, drain
    from ktrace.bundle.inputs import read_inputs
    from ktrace.perf import release_free_memory
    from ktrace.report.progress import ProgressLine

    found = read_inputs(inputs)
    line = None if quiet or not sys.stderr.isatty() else ProgressLine(sys.stderr, found.files)

    def on_step(step: Step) -> None:
        if isinstance(step, Indexed | Analysing):
            release_free_memory()
        if line is not None:
            line.step(step)

    try:
        result = drain(found, on_step=on_step)
    finally:
        if line is not None:
            line.close()
    release_free_memory()  # before the report's own
    return result


def cmd_export(args: argparse.Namespace) -> int:
    try:
        from ktrace.report.parquet import write_parquet
    except ImportError:
        raise UsageError(
            "ktrace export needs pyarrow, which is not installed",
            "pip install 'ktrace[export]'",
        ) from None
    result = _analyze_with_progress(args.inputs, quiet=args.quiet)
    with _captures_closing(result):
        for path in write_parquet(result, args.parquet):
            print(path)
    for warning in result.warnings:
        print(f"{_prog()}: warning: {warning}", file=sys.stderr)
    return ExitStatus.OK


def cmd_decode(args: argparse.Namespace) -> int:
    from ktrace.bundle.inputs import read_inputs
    from ktrace.decode.deep import show
    from ktrace.decode.index import build_index

    point_id, number = args.packet
    found = read_inputs([args.input])
    path = _file_of_point(found.files, found.declared, point_id, args.input)
    with build_index([path], workers=1, declared=found.declared) as index:
        total = len(index)
        if not 1 <= number <= total:
            raise UsageError(f"{path}: has packets 1 to {total}, not {number}")
        row = number - 1
        point = index.points[int(index.columns.point[row])]
        raw = index.packet_bytes(row)
        print(
            f"packet {number} of {total}, point {point.id}, {len(raw)} bytes captured "
            f"of {int(index.columns.wirelen[row])}"
        )
        for warning in index.warnings:
            print(f"{_prog()}: warning: {warning}", file=sys.stderr)
        sys.stdout.write(show(raw, point.linktype))
    return ExitStatus.OK


def _file_of_point(
    files: Sequence[Path], declared: dict[Path, Point], point_id: str | None, given: Path
) -> Path:
    """The capture file holding `point_id` (a bundle's declared point, or a file named after
    it as plain files' points are), or the one file there is when no point is named."""
    if point_id is None:
        if len(files) != 1:
            raise UsageError(
                f"{given}: holds {len(files)} capture points",
                "name one as findings cite packets: POINT#N, e.g. "
                f"{_point_of(files[0], declared)}#1",
            )
        return files[0]
    for path in files:
        if point_id == _point_of(path, declared) or point_id.startswith(
            _point_of(path, declared) + ":"
        ):
            return path
    known = ", ".join(_point_of(p, declared) for p in files)
    raise UsageError(f"{given}: no capture point {point_id!r}", f"its points: {known}")


def _point_of(path: Path, declared: dict[Path, Point]) -> str:
    point = declared.get(path)
    return point.id if point is not None else path.name.split(".")[0] or path.name


def cmd_open(args: argparse.Namespace) -> int:
    from ktrace.bundle.inputs import read_inputs
    from ktrace.pcap.reader import check_capture

    found = read_inputs(args.inputs)  # bad input is a one-line error before the screen opens
    for path in found.files:
        check_capture(path)
    # textual costs ~210 ms to import: only when the UI is really wanted
    from ktrace.tui.app import run

    run(args.inputs, found, tracebacks=args.debug)
    return ExitStatus.OK


def _kube(args: argparse.Namespace) -> KubeFlags:
    from ktrace.kube.api import KubeFlags

    return KubeFlags(args.kubeconfig, args.context, args.namespace, args.request_timeout)


def cmd_capture(args: argparse.Namespace) -> int:
    from ktrace.capture.commands import capture_command
    from ktrace.capture.session import Options, parse_size

    opts = Options(
        image=args.image,
        bpf=args.filter or "",
        duration=args.duration,
        count=args.count,
        max_size=parse_size(args.max_size) if args.max_size else None,
        node=not args.no_node,
        node_namespace=args.node_namespace,
        interactive=sys.stderr.isatty(),
        container=args.container,
        from_outside=args.from_outside,
    )
    if args.from_outside and args.no_node:
        raise UsageError(
            "--from-outside captures the nodes' NICs: it cannot go with --no-node",
            "drop one of them",
        )
    return capture_command(
        _kube(args), args.target, args.selector, opts, args.output_dir, open_ui=args.open
    )


def cmd_dns(args: argparse.Namespace) -> int:
    from ktrace.capture.dnscheck import dns_command
    from ktrace.capture.session import Options

    opts = Options(image=args.image, container=args.container)
    return dns_command(_kube(args), args.target, args.selector, args.names, opts, args.output_dir)


def cmd_trace(args: argparse.Namespace) -> int:
    from ktrace.capture.session import Options
    from ktrace.capture.trace import trace_command

    opts = Options(
        image=args.image,
        node=not args.no_node,
        node_namespace=args.node_namespace,
        container=args.container,
    )
    return trace_command(_kube(args), args.source, args.to, args.dns, opts, args.output_dir)


def cmd_cleanup(args: argparse.Namespace) -> int:
    from ktrace.capture.commands import cleanup_command

    return cleanup_command(_kube(args), args.all_namespaces)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a packet number or count") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _inputs_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="FILE_OR_DIR",
        help="pcap/pcapng files (gzip allowed), directories of them, or bundles",
    )


def _export_args(p: argparse.ArgumentParser) -> None:
    """examples:
      ktrace export bundle/ --parquet out/
      pip install duckdb
      python3 -c "import duckdb, sys; duckdb.sql(sys.argv[1]).show()" \\
        "SELECT point, count(*) FROM 'out/packets.parquet' GROUP BY point"

    Tables: packets, flows, paths (one row per hop), losses, dns, http, tls, findings;
    packets join flows on `flow` and `conversation`, paths and losses on `conversation`,
    each other across points on `identity`."""
    _inputs_arg(p)
    p.add_argument(
        "--parquet", type=Path, metavar="DIR", required=True, help="write Parquet tables into DIR"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress line on stderr")


def _analyze_args(p: argparse.ArgumentParser) -> None:
    _inputs_arg(p)
    p.add_argument(
        "-o",
        "--output",
        choices=("text", "json"),
        default="text",
        help="output format (default: text)",
    )
    p.add_argument(
        "--json", dest="output", action="store_const", const="json", help="same as -o json"
    )
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress line on stderr (it shows only on a terminal, after a second)",
    )
    p.add_argument(
        "--limit",
        type=_positive,
        default=50,
        metavar="N",
        help="rows per table in text output (default: 50)",
    )


def _open_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="FILE_OR_DIR",
        help="pcap/pcapng files, directories of them, bundles (.tar.gz too)",
    )


def _packet(text: str) -> tuple[str | None, int]:
    """N, or POINT#N as findings and the Parquet tables cite a packet."""
    point, mark, number = text.rpartition("#")
    try:
        value = int(number)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a packet: give N or POINT#N (as findings cite packets)"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"packet numbers start at 1, not {value}")
    if mark and not point:
        raise argparse.ArgumentTypeError(f"{text!r} names no point before '#'")
    return (point or None), value


def _decode_args(p: argparse.ArgumentParser) -> None:
    """examples:
    ktrace decode capture.pcap 35
    ktrace decode pcaps/lab/policy-drop node-b-eth0#35"""
    p.add_argument(
        "input", type=Path, metavar="FILE_OR_DIR", help="a pcap/pcapng file, or a bundle"
    )
    p.add_argument(
        "packet",
        type=_packet,
        metavar="PACKET",
        help="N (1-based, as tcpdump -r and tshark count) or POINT#N, as findings cite it",
    )


def _seconds(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    t = text.strip().lower()
    scale = units.get(t[-1:], 0)
    try:
        value = float(t[:-1] if scale else t) * (scale or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30s, 5m or 1h") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def _kube_args(p: argparse.ArgumentParser, top: bool = False) -> None:
    """kubectl's own global flags, spelled as kubectl spells them; like kubectl's, they may
    come before the command too (the command's own, when given, win)."""
    g = p.add_argument_group("cluster (as kubectl)")

    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    g.add_argument(
        "-n",
        "--namespace",
        default=default(None),
        help="namespace of the target (default: the context's)",
    )
    g.add_argument("--context", default=default(None), help="kubeconfig context to use")
    g.add_argument(
        "--kubeconfig",
        default=default(None),
        help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)",
    )
    g.add_argument(
        "--request-timeout",
        type=_seconds,
        default=default(30.0),
        metavar="DURATION",
        help="timeout of each API request (default: 30s)",
    )


def _container_args(p: argparse.ArgumentParser) -> None:
    from ktrace.kube.image import DEFAULT_IMAGE

    p.add_argument(
        "-c",
        "--container",
        help="the app container whose processes the debug container shares (targetContainerName)",
    )
    p.add_argument(
        "--image",
        default=DEFAULT_IMAGE,
        help=f"debug image with tcpdump, dig, ip and sh (default: {DEFAULT_IMAGE})",
    )


def _cluster_tail(p: argparse.ArgumentParser) -> None:
    """What every command that runs on the cluster ends with: the bundle, the debug container,
    kubectl's flags."""
    p.add_argument(
        "-o", "--output-dir", type=Path, metavar="DIR", help="bundle directory (default: new)"
    )
    _container_args(p)
    _kube_args(p)


def _node_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-node", action="store_true", help="pod side only: no node debug pods")
    p.add_argument(
        "--node-namespace",
        metavar="NS",
        help="namespace for node debug pods (needs PodSecurity privileged; default: the target's)",
    )


def _target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "target",
        nargs="?",
        metavar="TARGET",
        help="pod/NAME, NAME, deploy/NAME or svc/NAME (its endpoint pods)",
    )
    p.add_argument("-l", "--selector", help="pods by label selector instead of TARGET")


def _capture_args(p: argparse.ArgumentParser) -> None:
    """examples:
      kubectl ktrace capture web-1 --duration 30s
      kubectl ktrace capture svc/web -f 'tcp port 80' -o web-bundle
      kubectl ktrace capture -l app=web --no-node --count 1000 --open
      kubectl ktrace capture svc/web --from-outside -f 'tcp port 30080 or tcp port 80'

    Each pod gets an idle ephemeral container (ktrace-xxxxx) that runs tcpdump; ephemeral
    containers cannot be removed from a pod, so ktrace ends its process when done. Node
    capture starts a node debug pod (host network, NET_ADMIN/NET_RAW) per node, deleted
    when done; `kubectl ktrace cleanup` ends what an interrupted run left."""
    _target_args(p)
    p.add_argument(
        "-f",
        "--filter",
        metavar="BPF",
        help="tcpdump filter, one argument: -f 'tcp port 80' (node NICs also keep the overlay)",
    )
    p.add_argument("--duration", type=_seconds, help="stop after this long, e.g. 30s, 5m")
    p.add_argument("--count", type=_positive, help="stop after N packets at each pod's eth0")
    p.add_argument("--max-size", metavar="SIZE", help="stop when the bundle reaches SIZE (100M)")
    p.add_argument(
        "--open",
        action="store_true",
        help="follow the capture live in the terminal UI; quitting it stops the capture",
    )
    p.add_argument(
        "--from-outside",
        action="store_true",
        help="also capture every node's NIC and overlay, where external traffic to a "
        "NodePort or LoadBalancer enters (whichever node it picks)",
    )
    _node_args(p)
    _cluster_tail(p)


def _dns_args(p: argparse.ArgumentParser) -> None:
    """examples:
      kubectl ktrace dns web-1 web example.com
      kubectl ktrace dns -n shop deploy/checkout payments.shop.svc.cluster.local.

    Exit status 1 when a name does not resolve or a DNS server does not answer."""
    _target_args(p)
    p.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="names to resolve as the pod's resolver would (default: kubernetes.default)",
    )
    _cluster_tail(p)


def _trace_args(p: argparse.ArgumentParser) -> None:
    """examples:
    kubectl ktrace trace client --to svc/web:80
    kubectl ktrace trace client --to pod/web-2:8080
    kubectl ktrace trace client --dns example.com"""
    p.add_argument("source", metavar="SOURCE", help="the pod the probe leaves from: pod/NAME")
    p.add_argument(
        "--to",
        metavar="DEST",
        help="TCP connect to svc/NAME[:PORT] (its ClusterIP), pod/NAME:PORT or HOST:PORT",
    )
    p.add_argument("--dns", metavar="NAME", help="instead: a DNS query through the pod's resolver")
    _node_args(p)
    _cluster_tail(p)


def _cleanup_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-A", "--all-namespaces", action="store_true", help="look in every namespace")
    _kube_args(p)


@dataclass(frozen=True)
class Command:
    """A subcommand: its name and one-line summary, what runs it, its arguments."""

    name: str
    summary: str
    run: Callable[[argparse.Namespace], int]
    add_arguments: Callable[[argparse.ArgumentParser], None]  # its docstring: examples, notes


# The one description of every command: the parser and its help are generated from it.
COMMANDS = (
    Command(
        "analyze",
        "flows, DNS, HTTP and TLS, and findings of pcap/pcapng files or bundles",
        cmd_analyze,
        _analyze_args,
    ),
    Command(
        "export",
        "the analysis as Parquet tables (packets, flows, paths, DNS, HTTP, findings) for DuckDB",
        cmd_export,
        _export_args,
    ),
    Command(
        "open",
        "browse captures in the terminal UI: points, flows, paths, DNS, findings, HTTP",
        cmd_open,
        _open_args,
    ),
    Command(
        "decode",
        "show one packet: scapy layer tree and hex dump",
        cmd_decode,
        _decode_args,
    ),
    Command(
        "capture",
        "capture a pod's traffic in its network namespace and on its node (veth, NIC, overlay)",
        cmd_capture,
        _capture_args,
    ),
    Command(
        "dns",
        "resolve names as the pod does, ask each DNS server directly, capture it all",
        cmd_dns,
        _dns_args,
    ),
    Command(
        "trace",
        "send one probe from a pod, capturing on the way: where it went, where it stopped",
        cmd_trace,
        _trace_args,
    ),
    Command(
        "cleanup",
        "delete node debug pods and end ephemeral containers ktrace left running",
        cmd_cleanup,
        _cleanup_args,
    ),
)


DEBUG_HELP = "show tracebacks instead of one-line errors"


def build_parser() -> argparse.ArgumentParser:
    prog = _prog()
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Packet-capture troubleshooting for Kubernetes networking incidents.",
        epilog=f"Run '{prog} COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"ktrace {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    _kube_args(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for c in COMMANDS:
        p = sub.add_parser(
            c.name,
            help=c.summary,
            description=c.summary,
            epilog=inspect.cleandoc(c.add_arguments.__doc__ or "") or None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        c.add_arguments(p)
        # where the error's hint leads people to put it: after the command too
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        p.set_defaults(run=c.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ktrace.perf import tune_process

    tune_process()
    prog = _prog()
    try:
        return int(args.run(args))
    except KtraceError as exc:
        if args.debug:
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return int(exc.exit_status)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return int(ExitStatus.INTERRUPTED)
    except BrokenPipeError:
        # The reader (head, less) went away: not an error worth a message.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return int(ExitStatus.OK)
    except OSError as exc:  # the machine's, not ktrace's: a full disk, a file gone
        if args.debug:
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"{prog}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return int(ExitStatus.ERROR)
    except Exception as exc:
        if args.debug:
            raise
        print(
            f"{prog}: internal error: {type(exc).__name__}: {exc} (run again with --debug "
            "for the traceback, and report it)",
            file=sys.stderr,
        )
        return int(ExitStatus.ERROR)


def run() -> NoReturn:
    """The installed commands: main(), then an exit without Python's teardown, which frees
    every object one at a time (0.1 s after analysing a 1 GB capture) for a process about to
    end anyway. Output is flushed and exit handlers run first; a process that still has
    threads a normal exit would wait for exits normally."""
    status = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # the reader went away: as main() treats it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except OSError as exc:  # a full disk, say: what Python would only warn about at exit
        print(f"{_prog()}: error: the output was not all written: {exc}", file=sys.stderr)
        status = int(ExitStatus.ERROR)
    if threading.active_count() > 1:
        raise SystemExit(status)
    atexit._run_exitfuncs()  # e.g. the unpacked bundle's temporary directory
    os._exit(status)
