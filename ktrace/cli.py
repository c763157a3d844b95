"""Command line: parse arguments into calls on the core, and the one place errors are printed.

`kubectl ktrace ...` runs this same entry point through the `kubectl-ktrace` script.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ktrace import __version__
from ktrace.errors import ExitStatus, KtraceError, UsageError


def _prog() -> str:
    name = os.path.basename(sys.argv[0] or "ktrace")
    return "kubectl ktrace" if name.startswith("kubectl-") else "ktrace"


def cmd_analyze(args: argparse.Namespace) -> int:
    from ktrace.analysis.report import analyze, to_dict
    from ktrace.report.text import render_report

    data = to_dict(analyze(args.inputs))
    if args.output == "json":
        json.dump(data, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_report(data, args.limit))
    for warning in data["warnings"]:  # type: ignore[attr-defined]
        print(f"{_prog()}: warning: {warning}", file=sys.stderr)
    return ExitStatus.OK


def cmd_decode(args: argparse.Namespace) -> int:
    from ktrace.decode.deep import show
    from ktrace.decode.index import build_index

    with build_index([args.file], workers=1) as index:
        total = len(index)
        if not 1 <= args.number <= total:
            raise UsageError(f"{args.file}: has packets 1 to {total}, not {args.number}")
        row = args.number - 1
        point = index.points[int(index.columns.point[row])]
        raw = index.packet_bytes(row)
        print(
            f"packet {args.number} of {total}, point {point.id}, {len(raw)} bytes captured "
            f"of {int(index.columns.wirelen[row])}"
        )
        for warning in index.warnings:
            print(f"{_prog()}: warning: {warning}", file=sys.stderr)
        sys.stdout.write(show(raw, point.linktype))
    return ExitStatus.OK


def cmd_open(args: argparse.Namespace) -> int:
    from ktrace.analysis.report import read_inputs

    found = read_inputs(args.inputs)  # bad input is a one-line error before the screen opens
    # textual costs ~210 ms to import: only when the UI is really wanted
    from ktrace.tui.app import run

    run(args.inputs, found)
    return ExitStatus.OK


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


# The one description of every command: the parser and its help are generated from it.
COMMANDS: dict[
    str, tuple[str, Callable[[argparse.Namespace], int], Callable[[argparse.ArgumentParser], None]]
] = {}


def command(
    name: str, summary: str
) -> Callable[
    [Callable[[argparse.ArgumentParser], None]], Callable[[argparse.ArgumentParser], None]
]:
    def register(
        add: Callable[[argparse.ArgumentParser], None],
    ) -> Callable[[argparse.ArgumentParser], None]:
        COMMANDS[name] = (summary, globals()[f"cmd_{name}"], add)
        return add

    return register


@command("analyze", "flows, DNS transactions and findings of pcap/pcapng files or bundles")
def _analyze_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="FILE_OR_DIR",
        help="pcap/pcapng files (gzip allowed), directories of them, or bundles",
    )
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
        "--limit",
        type=_positive,
        default=50,
        metavar="N",
        help="rows per table in text output (default: 50)",
    )


@command("open", "browse captures in the terminal UI: points, flows, paths, DNS, findings")
def _open_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="FILE_OR_DIR",
        help="pcap/pcapng files, directories of them, bundles (.tar.gz too)",
    )


@command("decode", "show one packet: scapy layer tree and hex dump")
def _decode_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path, help="a pcap/pcapng file")
    p.add_argument(
        "number",
        type=_positive,
        metavar="N",
        help="packet number, 1-based as tcpdump -r and tshark count",
    )


def build_parser() -> argparse.ArgumentParser:
    prog = _prog()
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Packet-capture troubleshooting for Kubernetes networking incidents.",
        epilog=f"Run '{prog} COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"ktrace {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks instead of one-line errors"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (summary, run, add) in COMMANDS.items():
        p = sub.add_parser(name, help=summary, description=summary)
        add(p)
        p.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ktrace.perf import tune_allocator

    tune_allocator()
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
    except Exception as exc:
        if args.debug:
            raise
        print(
            f"{prog}: internal error: {type(exc).__name__}: {exc} (run again with --debug "
            "for the traceback, and report it)",
            file=sys.stderr,
        )
        return int(ExitStatus.ERROR)
