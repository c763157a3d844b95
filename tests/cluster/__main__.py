"""python -m tests.cluster up [--proxy-mode iptables|nftables] [--kubeconfig FILE] | down |
status | fault NAME on|off | record SCENARIO|all DIR | build

A real Kubernetes on this machine (tests/cluster/cluster.py), built from the pinned releases in
tests/cluster/versions.py into /var/cache/ktrace-cluster (the first `up` builds for minutes,
later ones start in under a minute). `up --kubeconfig FILE` writes an admin kubeconfig there:

    sudo python -m tests.cluster up --kubeconfig ~/ktrace-test.kubeconfig
    KUBECONFIG=~/ktrace-test.kubeconfig kubectl ktrace trace client --to svc/web \\
        --image ktrace.test/debug:1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tests.cluster.build import BuildError, build
from tests.cluster.cluster import FAULTS, PROXY_MODES, Cluster
from tests.cluster.processes import ClusterError
from tests.cluster.record import SCENARIOS, record


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build what is missing, start the cluster, leave it running")
    up.add_argument("--proxy-mode", choices=PROXY_MODES, default="iptables")
    up.add_argument("--kubeconfig", type=Path, help="write an admin kubeconfig here")
    sub.add_parser("down", help="stop everything and remove the cluster's state")
    sub.add_parser("status", help="processes, nodes and faults")
    sub.add_parser("build", help="only build (into the cache)")
    fault = sub.add_parser("fault", help="switch a fault on or off")
    fault.add_argument("name", choices=FAULTS)
    fault.add_argument("state", choices=("on", "off"))
    rec = sub.add_parser("record", help="record a scenario (or all) as a trace's bundle")
    rec.add_argument("scenario", choices=(*SCENARIOS, "all"))
    rec.add_argument("dir", type=Path)
    args = parser.parse_args()
    try:
        if args.command == "up":
            cluster = Cluster().up(args.proxy_mode, args.kubeconfig)
            print(args.kubeconfig or cluster.admin_kubeconfig)
        elif args.command == "down":
            Cluster().down()
        elif args.command == "status":
            print(json.dumps(Cluster().status(), indent=1))
        elif args.command == "build":
            print(build())
        elif args.command == "record":
            names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
            for name in names:
                out = args.dir / name if args.scenario == "all" else args.dir
                print(record(Cluster(), name, out))
        else:
            Cluster().fault(args.name, args.state == "on")
    except (ClusterError, BuildError) as exc:
        print(f"python -m tests.cluster: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
