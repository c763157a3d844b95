"""A live capture from start to stop: containers up, tcpdump at every point, streams into the
bundle, and a stop that always cleans up.

Stopping (duration, count, size, Ctrl-C, lost connection) kills each tcpdump through its pid
(closing a stream does not), keeps tcpdump's captured/dropped counts, ends the ephemeral
containers, deletes the node pods, and leaves a readable bundle, marked `interrupted` with the
reason when it was cut short.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from ktrace.bundle.manifest import (
    CaptureStatus,
    Manifest,
    PointSpec,
    rfc3339,
    write_json,
    write_manifest,
    write_private,
)
from ktrace.bundle.node_evidence import FAILED, SNAPSHOT
from ktrace.capture import kernel_drops, tcpdump
from ktrace.capture.plan import node_points, pod_iflink, pod_points
from ktrace.capture.point import Plan, PointRun
from ktrace.capture.progress import CaptureProgress
from ktrace.errors import ClusterError, ExitStatus, UsageError
from ktrace.kube import access, debug
from ktrace.kube.api import Api, PodSecurityError
from ktrace.kube.execstream import ExecStream, run
from ktrace.kube.image import DEFAULT_IMAGE
from ktrace.kube.targets import Pod, inventory
from ktrace.model import PointKind

NODE_METADATA = {
    "ip-addr": ["ip", "-d", "addr"],
    "ip-link": ["ip", "-d", "link"],
    "ip-route": ["ip", "route", "show", "table", "all"],
    "ip-neigh": ["ip", "neigh"],
    "iptables-save": ["iptables-save"],
    "nft-ruleset": ["nft", "list", "ruleset"],
    "conntrack": ["conntrack", "-L", "-o", "extended"],
}
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
# After a stop (its end, Ctrl-C, a lost stream), what stopping tcpdump and recording the nodes
# may take in all, however slow the cluster or this machine: then the cleanup, which always
# runs, each of its calls bounded too.
STOP_BUDGET = 30.0
EXEC_TIMEOUT = 30.0
OUT_OF_TIME = "not recorded: stopping had used up its time"


class Deadline:
    """A time by which a stage must be done, and what is left of it for one step."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def left(self, most: float) -> float:
        return max(0.0, min(most, self.at - time.monotonic()))


@dataclass(frozen=True)
class Options:
    image: str = DEFAULT_IMAGE
    bpf: str = ""
    duration: float | None = None
    count: int | None = None
    max_size: int | None = None
    node: bool = True
    node_namespace: str | None = None
    # every node's NIC and overlay devices too: where traffic from outside the cluster
    # (NodePorts, LoadBalancer addresses) enters, whichever node the load balancer picks
    from_outside: bool = False
    interactive: bool = False  # redraw progress in place (stderr is a terminal)
    container: str | None = None  # the app container whose processes the capture can see


class StopCause(Enum):
    END = "end"  # duration, count, size, or a stream that ended: the capture's own stop
    USER = "user"  # Ctrl-C or SIGTERM


@dataclass
class Outcome:
    bundle: Path
    status: CaptureStatus
    reason: str
    points: list[PointRun] = field(default_factory=list)
    cause: StopCause = StopCause.END

    def interrupted(self, err: TextIO | None = None) -> ExitStatus | None:
        """None for a complete bundle; else says why it was cut short and gives the status."""
        if self.status == CaptureStatus.COMPLETE:
            return None
        print(f"ktrace: bundle marked interrupted: {self.reason}", file=err or sys.stderr)
        return ExitStatus.INTERRUPTED if self.cause == StopCause.USER else ExitStatus.CLUSTER


@contextlib.contextmanager
def signals_interrupt() -> Iterator[threading.Event]:
    """Ctrl-C, and SIGTERM (a closing terminal, a CI timeout) like it, stop the capture and
    keep the bundle. The event says one came: some libraries wrap the KeyboardInterrupt
    raised inside them in an error of their own (pydantic building a validator on a first
    call), which must still read as the user's stop."""
    came = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        came.set()
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield came
        return
    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield came
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def parse_size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1] if t and t[-1] in units else ""
    try:
        value = float(t[: -1 if unit else None])
    except ValueError:
        raise UsageError(f"--max-size {text!r}: use a size like 500K, 100M or 2G") from None
    if value <= 0:
        raise UsageError(f"--max-size {text!r}: must be more than 0")
    return int(value * units[unit])


class Session:
    def __init__(
        self, api: Api, target: str, pods: list[Pod], bundle: Path, opts: Options, err: TextIO
    ) -> None:
        self.api, self.target, self.pods, self.bundle, self.opts = api, target, pods, bundle, opts
        self.err = err
        self.session = debug.suffix()
        self.ephemeral: dict[str, debug.Container] = {}
        self.node_pods: dict[str, debug.Container] = {}
        self.runs: list[PointRun] = []
        self.ttl = int((opts.duration or 3600) + 120)
        self.inventory: dict[str, Any] = {}
        self.tracefs = False  # node pods see the host's tracefs: kernel drop reasons
        self.traced: dict[str, str] = {}  # node -> "" when tracing, else why not
        self.trace_skipped = ""

    def say(self, text: str) -> None:
        print(f"ktrace: {text}", file=self.err, flush=True)

    # --- setting up ---------------------------------------------------------------------------
    def check_access(self) -> None:
        """Ask first what the user may do: the pod side cannot do without its permissions; the
        node side is given up, in one line, when the user may not run node pods."""
        namespaces = sorted({p.namespace for p in self.pods if not p.host_network})
        wanted = tuple(x for ns in namespaces for x in access.pod_side(ns))
        missing = access.denied(self.api, wanted)
        if missing:
            raise access.refusal(self.api, missing, "to run tcpdump in the pods")
        if not self.opts.node:
            return
        ns = self.opts.node_namespace or self.pods[0].namespace
        missing = access.denied(self.api, access.node_side(ns))
        if not missing:
            return
        refused = access.refusal(self.api, missing, "for node debug pods")
        if any(p.host_network for p in self.pods):
            raise refused
        self.say(f"node side given up: {refused.message}: capturing in the pods only")
        self.opts = replace(self.opts, node=False)

    def _ephemeral(self, pod: Pod) -> debug.Container:
        # named and remembered before the request: an interrupt during the PATCH must not
        # leave a container the cleanup does not know about
        c = debug.Container(pod.namespace, pod.name, f"ktrace-{self.session}", pod.node)
        self.ephemeral[pod.ref] = c
        try:
            self._add(pod, c, capabilities=True)
        except PodSecurityError as exc:
            if exc.level != "baseline":
                raise PodSecurityError(
                    f'namespace "{pod.namespace}" enforces PodSecurity "{exc.level}" '
                    f"(label pod-security.kubernetes.io/enforce={exc.level}): {exc.message}",
                    "tcpdump cannot run under restricted; ask for a baseline or privileged "
                    "namespace",
                    exc.level,
                ) from None
            # baseline refuses added capabilities, but containerd's defaults include NET_RAW
            self.say(
                f'namespace "{pod.namespace}" enforces PodSecurity baseline (label '
                "pod-security.kubernetes.io/enforce=baseline), which refuses NET_RAW/NET_ADMIN: "
                "retrying without added capabilities (the runtime's defaults often include "
                "NET_RAW)"
            )
            try:
                self._add(pod, c, capabilities=False)
            except PodSecurityError as again:
                # admission judges the whole pod: containers added before the label count
                raise PodSecurityError(
                    f'namespace "{pod.namespace}" enforces PodSecurity "baseline" and pod '
                    f"{pod.ref} already holds containers it refuses: {again.message}",
                    "ephemeral containers cannot be removed: capture another replica, or relax "
                    "the namespace label pod-security.kubernetes.io/enforce",
                    again.level,
                ) from None
        debug.wait_running(self.api, c, ephemeral=True)
        return c

    def _add(self, pod: Pod, c: debug.Container, capabilities: bool) -> None:
        debug.add_ephemeral(
            self.api,
            pod,
            c.name,
            self.opts.image,
            self.ttl,
            capabilities=capabilities,
            target_container=self.opts.container,
        )

    def _node_pod(self, node: str) -> debug.Container:
        ns = self.opts.node_namespace or self.pods[0].namespace
        c = debug.Container(ns, debug.node_pod_name(node), "capture", node)
        self.node_pods[node] = c
        try:
            debug.create_node_pod(
                self.api, c, self.opts.image, self.ttl, self.session, tracefs=self.tracefs
            )
        except PodSecurityError as exc:
            raise PodSecurityError(
                f'node capture refused: namespace "{ns}" enforces PodSecurity "{exc.level}" '
                f"(label pod-security.kubernetes.io/enforce={exc.level}), which forbids the host "
                "network and NET_RAW/NET_ADMIN a node debug pod needs",
                "pass --node-namespace with a namespace labelled "
                "pod-security.kubernetes.io/enforce=privileged, or --no-node for the pod side only",
                exc.level,
            ) from None
        debug.wait_running(self.api, c, ephemeral=False)
        return c

    def plan(self) -> list[Plan]:
        plans: list[Plan] = []
        by_node: dict[str, list[tuple[Pod, int | None]]] = {}
        for pod in self.pods:
            if pod.host_network:
                if not self.opts.node:
                    raise UsageError(
                        f"pod {pod.ref} uses the host network: it has no network namespace of "
                        "its own, so only the node side can capture it (drop --no-node)"
                    )
                by_node.setdefault(pod.node, [])
                continue
            self.say(f"adding ephemeral container to {pod.ref} ({self.opts.image})")
            c = self._ephemeral(pod)
            plans += pod_points(pod, c, self.opts.bpf, self.opts.count)
            if self.opts.node:
                by_node.setdefault(pod.node, []).append((pod, pod_iflink(self.api, c)))
        if self.opts.node and by_node:
            self._ask_for_tracefs(next(iter(by_node)))
        if self.opts.node:
            nodes = {n["name"]: n["internalIP"] for n in self.inventory.get("nodes", [])}
            if self.opts.from_outside:
                for node in nodes:
                    by_node.setdefault(node, [])
            for node, on_node in by_node.items():
                self.say(f"starting node debug pod on {node}")
                c = self._node_pod(node)
                found = node_points(self.api, node, nodes.get(node, ""), c, on_node, self.opts.bpf)
                with_veth = {p.pod for p in found if p.kind == PointKind.VETH}
                for pod, iflink in on_node:
                    if pod.name not in with_veth:
                        self.say(
                            f"no host-side interface with index {iflink} on {node} for "
                            f"{pod.ref}: its veth is not captured (a CNI without veth pairs?)"
                        )
                plans += found
        return plans

    def _ask_for_tracefs(self, node: str) -> None:
        """Ask the cluster, with a server-side dry run of the node pod, whether its namespace
        admits the hostPath volume of tracefs the kernel's drop events need. When only that
        volume is refused (PodSecurity, RBAC, a policy engine), one line says what is given
        up and the capture goes on; a node pod refused anyway is the node pod's error."""
        ns = self.opts.node_namespace or self.pods[0].namespace
        c = debug.Container(ns, debug.node_pod_name(node), "capture", node)

        def admitted(tracefs: bool) -> ClusterError | None:
            try:
                debug.create_node_pod(self.api, c, self.opts.image, self.ttl, self.session,
                                      tracefs=tracefs, dry_run=True)  # fmt: skip
            except ClusterError as exc:
                return exc
            return None

        refusal = admitted(True)
        self.tracefs = refusal is None
        if refusal is None or admitted(False) is not None:
            return
        if isinstance(refusal, PodSecurityError):
            self.trace_skipped = kernel_drops.skipped(ns, refusal.level)
        else:
            self.trace_skipped = kernel_drops.refused(ns, refusal.message)
        self.say(self.trace_skipped)

    def _each_node(self, work: Callable[[str, debug.Container], None]) -> None:
        """Some work on every node pod at once: a capture may span many nodes."""
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda item: work(*item), list(self.node_pods.items())))

    def _start_trace(self, node: str, c: debug.Container) -> None:
        if not self.tracefs:
            self.traced[node] = self.trace_skipped
            return
        try:
            result = run(self.api, c.namespace, c.pod, c.name,
                         kernel_drops.setup_argv(self.session, node), timeout=30)  # fmt: skip
            why = result.stderr.decode("utf-8", "replace").strip().splitlines()
            self.traced[node] = (
                ""
                if result.code == 0
                else f"kernel drop reasons not recorded: {why[-1] if why else result.code}"
            )
        except ClusterError as exc:
            self.traced[node] = f"kernel drop reasons not recorded: {exc.message}"
        if self.traced[node] and self.tracefs:
            self.say(f"{node}: {self.traced[node]}")

    def _collect_trace(self, node: str, c: debug.Container, deadline: Deadline) -> None:
        folder = self.bundle / "nodes" / node
        if self.traced.get(node) != "":
            why = self.traced.get(node) or "kernel drop reasons not recorded"
            write_private(folder / "evidence.txt", why + "\n")
            return
        if deadline.left(60) < 1:
            write_private(folder / "evidence.txt", f"kernel drop reasons {OUT_OF_TIME}\n")
            return
        try:
            result = run(self.api, c.namespace, c.pod, c.name,
                         kernel_drops.collect_argv(self.session, node),
                         timeout=deadline.left(60))  # fmt: skip
            write_private(folder / "kfree_skb.txt", result.text)
        except ClusterError as exc:
            write_private(folder / "evidence.txt", f"kernel drop reasons lost: {exc.message}\n")

    # --- running ------------------------------------------------------------------------------
    def _open(self, plan: Plan) -> ExecStream:
        c = plan.container
        argv = tcpdump.command(plan.interface, plan.bpf, plan.count)
        return ExecStream(self.api, c.namespace, c.pod, c.name, argv)

    def start(self, plans: list[Plan]) -> None:
        points = self.bundle / "points"
        points.mkdir(mode=0o700, exist_ok=True)
        # counters and drop events first: their window must hold the whole capture
        self.counters("start")
        self._each_node(self._start_trace)
        for plan in plans:
            r = PointRun(plan, points / f"{plan.id}.pcap")
            self.runs.append(r)
            r.start(self._open)
        for r in self.runs:
            r.wait_started(START_TIMEOUT)
        # readable while it runs (ktrace open follows it), and after a kill -9
        self.write(CaptureStatus.CAPTURING, "")
        failed = [r for r in self.runs if r.finished.is_set() and r.bytes == 0]
        if failed:
            r = failed[0]
            hint = None
            if "permission" in (r.error or "").lower() or "not permitted" in (r.error or ""):
                hint = "tcpdump needs NET_RAW: this runtime does not grant it by default"
            raise ClusterError(f"tcpdump at {r.plan.id} did not start: {r.error}", hint)

    def wait(self, stop: threading.Event, progress: CaptureProgress) -> str:
        """Until a stop condition; returns why ("" for a normal end)."""
        began = time.monotonic()
        pod_runs = [r for r in self.runs if r.plan.count]
        poll = began
        while True:
            progress.show(self.runs, time.monotonic() - began)
            if stop.wait(0.5):
                return ""  # asked to stop (the UI closed): an end like --duration's
            now = time.monotonic()
            if self.opts.duration is not None and now - began >= self.opts.duration:
                return ""
            if pod_runs and all(r.finished.is_set() for r in pod_runs):
                return ""
            if self.opts.max_size and sum(r.bytes for r in self.runs) >= self.opts.max_size:
                return ""
            if all(r.finished.is_set() for r in self.runs):
                lost = [f"{r.plan.id}: {r.error}" for r in self.runs if r.error]
                return "; ".join(lost) or "every capture stream ended"
            if now - poll >= 3:
                poll = now
                self._poke_stats()

    def _poke_stats(self) -> None:
        """tcpdump prints its counts (kernel drops among them) on SIGUSR1."""
        for r in self.runs:
            if r.pid is not None and not r.finished.is_set():
                c = r.plan.container
                with contextlib.suppress(ClusterError):
                    run(self.api, c.namespace, c.pod, c.name, ["kill", "-USR1", str(r.pid)], 5)

    def stop_points(self, deadline: Deadline) -> None:
        """Every tcpdump asked to end at once (SIGINT: it flushes and says its counts)."""

        def stop(r: PointRun) -> None:
            if r.finished.is_set() or r.pid is None:
                return
            c = r.plan.container
            r.mark_stopping()
            with contextlib.suppress(ClusterError):
                run(self.api, c.namespace, c.pod, c.name, ["kill", "-INT", str(r.pid)],
                    deadline.left(10))  # fmt: skip
            r.finished.wait(deadline.left(STOP_TIMEOUT))

        with ThreadPoolExecutor(max_workers=max(8, len(self.runs))) as pool:
            list(pool.map(stop, self.runs))

    def _node_files(
        self,
        node: str,
        c: debug.Container,
        sub: str,
        commands: dict[str, list[str]],
        deadline: Deadline | None = None,
    ) -> None:
        """Each command's output on the node into nodes/<node>/<sub>/<name>; a command that
        failed leaves a FAILED line saying why (the analysis takes it as not recorded)."""
        folder = self.bundle / "nodes" / node / sub
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for parent in (folder, *folder.parents):
            if parent == self.bundle:
                break
            parent.chmod(0o700)
        for name, argv in commands.items():
            timeout = deadline.left(EXEC_TIMEOUT) if deadline else EXEC_TIMEOUT
            if timeout < 1:
                write_private(folder / name, f"{FAILED} {' '.join(argv)}: {OUT_OF_TIME}\n")
                continue
            try:
                result = run(self.api, c.namespace, c.pod, c.name, argv, timeout=timeout)
                text = result.text
                if result.code != 0:
                    why = result.stderr.decode("utf-8", "replace").strip()
                    text = f"{FAILED} {' '.join(argv)}: exit {result.code}: {why}\n"
            except ClusterError as exc:
                text = f"{FAILED} {' '.join(argv)}: {exc.message}\n"
            write_private(folder / name, text)

    def counters(self, when: str, deadline: Deadline | None = None) -> None:
        """Rule, conntrack, protocol and interface counters on every node: at the start and at
        the end of the capture, so the analysis sees what rose while it ran."""
        self._each_node(
            lambda node, c: self._node_files(node, c, f"counters/{when}", SNAPSHOT, deadline)
        )

    def node_metadata(self, deadline: Deadline) -> None:
        """What the nodes hold at the end, the counters first (the evidence of a drop), as far
        as the stop's time allows: what it does not is marked as not recorded."""
        self.counters("end", deadline)
        self._each_node(lambda node, c: self._collect_trace(node, c, deadline))
        metadata = {f"{k}.txt": v for k, v in NODE_METADATA.items()}
        self._each_node(lambda node, c: self._node_files(node, c, ".", metadata, deadline))

    def cleanup(self) -> list[str]:
        """End what was started, whatever happened before, all at once (each call bounded by
        the request timeout); returns what could not be ended."""

        def end(c: debug.Container) -> str | None:
            try:
                debug.end_ephemeral(self.api, c)
            except ClusterError as exc:
                return f"ephemeral container {c.name} in {c.where}: {exc.message}"
            return None

        def delete(c: debug.Container) -> str | None:
            try:
                debug.delete_pod(self.api, c)
            except ClusterError as exc:
                return f"node pod {c.where}: {exc.message}"
            return None

        work = [(end, c) for c in self.ephemeral.values()]
        work += [(delete, c) for c in self.node_pods.values()]
        with ThreadPoolExecutor(max_workers=max(1, min(16, len(work)))) as pool:
            found = list(pool.map(lambda item: item[0](item[1]), work))
        return [x for x in found if x]

    # --- the bundle ---------------------------------------------------------------------------
    def write(self, status: CaptureStatus, reason: str) -> None:
        points = []
        for r in self.runs:
            stats = r.stats()
            p = r.plan
            points.append(
                PointSpec(
                    id=p.id,
                    kind=p.kind,
                    file=f"points/{p.id}.pcap",
                    node=p.node or None,
                    namespace=p.namespace,
                    pod=p.pod,
                    interface=p.interface,
                    ifindex=p.ifindex,
                    linktype=r.linktype(),
                    packets=stats.captured if stats.captured is not None else r.packets,
                    kernel_drops=stats.dropped,
                    started=rfc3339(r.began_ns),
                    stopped=rfc3339(r.ended_ns),
                )
            )
        write_manifest(
            self.bundle,
            Manifest(
                points=tuple(points),
                cluster=self.api.context,
                target=self.target,
                status=status,
                reason=reason,
            ),
        )


def default_bundle(target: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    safe = "".join(ch if ch.isalnum() or ch in "-." else "-" for ch in target).strip("-")
    return Path(f"ktrace-{safe}-{stamp}")


def capture(
    api: Api,
    target: str,
    pods: list[Pod],
    bundle: Path,
    opts: Options,
    err: TextIO | None = None,
    during: Callable[[Session], None] | None = None,
    stop: threading.Event | None = None,
) -> Outcome:
    """Run a whole capture. `during` runs once every point listens (trace sends its probe,
    `capture --open` opens the UI); setting `stop` ends it as --duration would."""
    if bundle.exists() and any(bundle.iterdir()):
        raise UsageError(f"{bundle} exists and is not empty", "choose another -o DIR")
    created = not bundle.exists()
    bundle.mkdir(parents=True, exist_ok=True, mode=0o700)
    err = err or sys.stderr  # looked up now: tests and callers swap sys.stderr
    session = Session(api, target, pods, bundle, opts, err)
    stop = stop or threading.Event()
    status, reason = CaptureStatus.COMPLETE, ""
    progress = CaptureProgress(err, opts.interactive)
    cause = StopCause.END
    try:
        with signals_interrupt() as came:
            try:
                session.check_access()
                session.inventory = inventory(api)
                for note in session.inventory.get("notes", []):
                    session.say(note)
                write_json(bundle / "inventory.json", session.inventory)
                plans = session.plan()
                session.start(plans)
                where = ", ".join(p.id for p in plans)
                session.say(
                    f"capturing at {len(plans)} point{'s' if len(plans) != 1 else ''}: {where}"
                    + (" (Ctrl-C stops)" if opts.duration is None and not opts.count else "")
                )
                if during is not None:
                    during(session)
                why = session.wait(stop, progress)
                if why:
                    status, reason = CaptureStatus.INTERRUPTED, why
            except (KeyboardInterrupt, Exception) as exc:
                if not (isinstance(exc, KeyboardInterrupt) or came.is_set()):
                    raise
                status, reason = CaptureStatus.INTERRUPTED, "stopped by the user (Ctrl-C)"
                cause = StopCause.USER
                session.say("stopping: Ctrl-C")
            lost = [r for r in session.runs if r.error and r.bytes]
            if lost and status == CaptureStatus.COMPLETE:
                status = CaptureStatus.INTERRUPTED
                reason = "; ".join(f"{r.plan.id}: {r.error}" for r in lost)
    except BaseException as exc:
        status = CaptureStatus.INTERRUPTED
        reason = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        with _quiet_interrupts():
            _finish(session, status, reason, progress)
        if created and not session.runs:
            shutil.rmtree(bundle, ignore_errors=True)  # refused before any packet: nothing to keep
        raise
    with _quiet_interrupts():
        _finish(session, status, reason, progress)
    return Outcome(bundle, status, reason, session.runs, cause)


@contextlib.contextmanager
def _quiet_interrupts() -> Iterator[None]:
    """A second Ctrl-C must not skip the cleanup: it is short and leaves nothing behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _finish(
    session: Session, status: CaptureStatus, reason: str, progress: CaptureProgress
) -> None:
    deadline = Deadline(STOP_BUDGET)
    session.stop_points(deadline)
    progress.done(session.runs)
    session.node_metadata(deadline)
    left = session.cleanup()
    for r in session.runs:
        if r.error and r.bytes and not r.stop_requested:
            session.say(f"{r.plan.id}: {r.error}")
    for what in left:
        session.say(f"could not clean up {what} (kubectl ktrace cleanup -A ends it)")
    if session.runs or status != CaptureStatus.COMPLETE:
        session.write(status, reason)
