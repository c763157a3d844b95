"""`kubectl ktrace capture | dns | trace | cleanup`: what each command does with the cluster,
between the parsed flags (cli.py) and the capture session."""

from __future__ import annotations

import io
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from ktrace.capture.session import Options, Outcome, Session, capture, default_bundle
from ktrace.capture.tcpdump import check_filter
from ktrace.errors import ClusterError, ExitStatus
from ktrace.kube.api import Api, KubeFlags
from ktrace.kube.targets import Pod, resolve


def capture_command(
    flags: KubeFlags,
    target: str | None,
    selector: str | None,
    opts: Options,
    out: Path | None,
    open_ui: bool = False,
) -> int:
    check_filter(opts.bpf)
    api = Api(flags)
    label, pods = resolve(api, target, selector)
    bundle = out or default_bundle(label)
    if open_ui:
        outcome = capture_with_ui(api, label, pods, bundle, opts)
    else:
        outcome = capture(api, label, pods, bundle, opts)
    print(bundle)
    status = outcome.interrupted()
    if status is not None:
        return int(status)
    print(f"ktrace: analyze it with: ktrace analyze {bundle}", file=sys.stderr)
    return int(ExitStatus.OK)


class LiveCapture:
    """A capture running in a thread while the UI follows its bundle."""

    def __init__(self, api: Api, label: str, pods: list[Pod], bundle: Path, opts: Options) -> None:
        self.stop = threading.Event()
        self.listening = threading.Event()
        self.log = io.StringIO()  # the terminal belongs to the UI meanwhile
        self.session: Session | None = None
        self.outcome: Outcome | None = None
        self.error: BaseException | None = None
        self.bundle = bundle
        self.thread = threading.Thread(
            target=self._run, args=(api, label, pods, bundle, opts), name="capture", daemon=True
        )

    def _run(self, api: Api, label: str, pods: list[Pod], bundle: Path, opts: Options) -> None:
        def started(session: Session) -> None:
            self.session = session
            self.listening.set()

        try:
            self.outcome = capture(
                api, label, pods, bundle, opts, err=self.log, during=started, stop=self.stop
            )
        except BaseException as exc:  # handed to the main thread
            self.error = exc
        finally:
            self.listening.set()

    def running(self) -> bool:
        return self.thread.is_alive()

    def summary(self) -> str:
        session = self.session
        if session is None:
            return "starting"
        packets = sum(r.packets for r in session.runs)
        size = sum(r.bytes for r in session.runs)
        state = "capturing" if self.running() else "capture ended"
        return f"{state}: {len(session.runs)} points, {packets:,} packets, {size / 1e6:.1f} MB"


def capture_with_ui(api: Api, label: str, pods: list[Pod], bundle: Path, opts: Options) -> Outcome:
    """The capture in a thread, `ktrace open` on its bundle in front; closing the UI stops it."""
    from ktrace.tui.app import run as run_ui

    live = LiveCapture(api, label, pods, bundle, replace(opts, interactive=False))
    live.thread.start()
    try:
        while not live.listening.wait(0.2):
            pass
    except KeyboardInterrupt:
        live.stop.set()  # setting up: the capture thread stops once it has points
    try:
        if live.error is None and live.session is not None:
            run_ui([bundle], live=live)
    finally:  # a crashed UI still ends the capture and keeps what arrived
        live.stop.set()
        live.thread.join()
        sys.stderr.write(live.log.getvalue())
    if live.error is not None:
        raise live.error
    assert live.outcome is not None
    return live.outcome


def cleanup_command(flags: KubeFlags, all_namespaces: bool) -> int:
    """Node pods by label; ephemeral containers by name prefix, ended through their PID 1
    (they cannot be removed from a pod's spec)."""
    from ktrace.kube import debug

    api = Api(flags)
    label = ",".join(f"{k}={v}" for k, v in debug.MANAGED_BY.items())
    if all_namespaces:
        nodes = api.call(api.core.list_pod_for_all_namespaces, label_selector=label)["items"]
        pods = api.call(api.core.list_pod_for_all_namespaces)["items"]
    else:
        nodes = api.call(api.core.list_namespaced_pod, api.namespace, label_selector=label)["items"]
        pods = api.call(api.core.list_namespaced_pod, api.namespace)["items"]
    done = failed = 0
    for obj in nodes:
        meta = obj["metadata"]
        c = debug.Container(meta["namespace"], meta["name"], "capture", "")
        try:
            debug.delete_pod(api, c)
            print(f"deleted pod {c.where}")
            done += 1
        except ClusterError as exc:
            print(f"ktrace: could not delete pod {c.where}: {exc}", file=sys.stderr)
            failed += 1
    for obj in pods:
        for name in _running_ephemeral(obj):
            meta = obj["metadata"]
            c = debug.Container(meta["namespace"], meta["name"], name, "")
            try:
                if debug.end_ephemeral(api, c):
                    print(f"ended ephemeral container {name} in {c.where}")
                    done += 1
            except ClusterError as exc:
                print(f"ktrace: could not end {name} in {c.where}: {exc}", file=sys.stderr)
                failed += 1
    if not done and not failed:
        scope = "any namespace" if all_namespaces else f'namespace "{api.namespace}"'
        print(f"nothing of ktrace's is running in {scope}")
    return int(ExitStatus.CLUSTER if failed else ExitStatus.OK)


def _running_ephemeral(pod: dict[str, Any]) -> list[str]:
    return [
        s["name"]
        for s in (pod.get("status") or {}).get("ephemeralContainerStatuses") or []
        if s.get("name", "").startswith("ktrace-") and "running" in (s.get("state") or {})
    ]
