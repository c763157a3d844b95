"""python -m tests.lab up [--shape S] | down [PREFIX] | status | fault NAME on|off |
record SCENARIO DIR [--shape S] | serve

`serve` runs the Kubernetes API server over the running lab and writes a kubeconfig for it
(default ./lab.kubeconfig): `KUBECONFIG=lab.kubeconfig kubectl get pods`, `kubectl ktrace ...`.

`up` leaves the lab running and prints its prefix; the other commands act on the running lab
(or the one named with --prefix). `record` brings a lab up for the recording when none runs.
`record all DIR` records every scenario into DIR/<scenario>.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tests.lab.lab import FAULTS, Lab, LabError, all_prefixes
from tests.lab.record import SCENARIOS, describe, record, scenarios_for
from tests.lab.topology import DEFAULT_SHAPE, SHAPES

SHAPE_HELP = "how packets move between pods: " + "; ".join(
    f"{s.name}: {s.about}" for s in SHAPES.values()
)


def running(prefix: str | None) -> Lab:
    if prefix:
        return Lab(prefix)
    labs = all_prefixes()
    if len(labs) != 1:
        raise LabError(
            "no lab is running (python -m tests.lab up)"
            if not labs
            else f"several labs run ({', '.join(labs)}): name one with --prefix"
        )
    return Lab(labs[0])


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.lab",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--prefix", help="the lab to act on (default: the only one running)")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build the lab and leave it running")
    up.add_argument("--shape", choices=SHAPES, default=DEFAULT_SHAPE, help=SHAPE_HELP)
    down = sub.add_parser("down", help="remove a lab (every lab when none is named)")
    down.add_argument("name", nargs="?", help="prefix of the lab to remove")
    sub.add_parser("status", help="namespaces, processes and faults of the running lab")
    fault = sub.add_parser("fault", help="switch a fault on or off")
    fault.add_argument("name", choices=FAULTS)
    fault.add_argument("state", choices=("on", "off"))
    rec = sub.add_parser("record", help="record a scenario as a capture bundle")
    rec.add_argument("scenario", choices=(*SCENARIOS, "all"))
    rec.add_argument("dir", type=Path)
    rec.add_argument(
        "--shape", choices=SHAPES, default=DEFAULT_SHAPE, help="shape of a lab built for it"
    )
    serve = sub.add_parser("serve", help="serve the running lab as a Kubernetes API")
    serve.add_argument("--kubeconfig", type=Path, default=Path("lab.kubeconfig"))
    serve.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        if args.command == "up":
            lab = Lab(args.prefix, shape=args.shape).up()
            print(lab.prefix)
        elif args.command == "down":
            for prefix in (
                [args.name or args.prefix] if (args.name or args.prefix) else all_prefixes()
            ):
                Lab(prefix).down()
                print(f"removed {prefix}")
        elif args.command == "status":
            print(json.dumps(running(args.prefix).status(), indent=1))
        elif args.command == "fault":
            running(args.prefix).fault(args.name, args.state == "on")
        elif args.command == "record":
            own = not all_prefixes() and not args.prefix
            lab = Lab(args.prefix, shape=args.shape).up() if own else running(args.prefix)
            names = scenarios_for(lab) if args.scenario == "all" else [args.scenario]
            try:
                for name in names:
                    out = args.dir / name if args.scenario == "all" else args.dir
                    record(lab, name, out)
                    print(f"{out}: {describe(out)}")
            finally:
                if own:
                    lab.down()
        elif args.command == "serve":
            from tests.lab.apiserver.server import ApiServer

            lab = running(args.prefix)
            server = ApiServer(lab.description(), port=args.port)
            server.kubeconfig(args.kubeconfig)
            print(f"serving {lab.prefix} at {server.url}; KUBECONFIG={args.kubeconfig}", flush=True)
            try:
                server.serve_forever()
            except KeyboardInterrupt:
                pass
            finally:
                server.stop()
    except LabError as exc:
        print(f"lab: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
