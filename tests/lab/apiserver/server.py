"""A Kubernetes API server over the running lab, faithful on the wire for kubectl 1.32 and the
`kubernetes` Python client: JSON objects and Status errors, discovery, Tables, watches,
strategic-merge and JSON patches of ephemeral containers, and exec over WebSocket (v5 and v4
channel protocols, binary frames, channel 3 status, pings).

TLS with a throw-away self-signed certificate: clients send bearer tokens only over TLS, and a
real apiserver stream is TLS (what the Python client's SSL-pending fixes are about).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import selectors
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.lab.apiserver import discovery
from tests.lab.apiserver.admission import (
    Refused,
    User,
    authorize,
    check_pod_security,
    validate_ephemeral_update,
)
from tests.lab.apiserver.cluster import Behaviour, Cluster
from tests.lab.apiserver.runtime import Running, Sandbox
from tests.lab.apiserver.websocket import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    FrameReader,
    accept_key,
    choose_protocol,
    frame,
)

GIT_VERSION = "v1.32.5"
Route = tuple[str, re.Pattern[str]]
NS = r"/api/v1/namespaces/(?P<ns>[^/]+)"


def _status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> bytes:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return json.dumps(body).encode()


def not_found(kind: str, name: str, group: str = "") -> Refused:
    what = f"{kind}.{group}" if group else kind
    return Refused(404, "NotFound", f'{what} "{name}" not found', {"name": name, "kind": kind})


def _labels_match(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if labels.get(k.strip()) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _pod_field(pod: dict[str, Any], path: str) -> str:
    value: Any = pod
    for part in path.split("."):
        value = value.get(part, "") if isinstance(value, dict) else ""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _fields_match(obj: dict[str, Any], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        negate = "!=" in term
        k, v = term.replace("!=", "=").replace("==", "=").split("=", 1)
        if (_pod_field(obj, k) == v) == negate:
            return False
    return True


def merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """JSON merge patch (RFC 7386): null removes."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = value
    return target


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ApiServer

    def log_message(self, format: str, *args: Any) -> None:
        if os.environ.get("KTRACE_APISERVER_LOG"):
            super().log_message(format, *args)

    # --- plumbing ------------------------------------------------------------------------------
    def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Audit-Id", secrets.token_hex(8))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, obj: Any, code: int = 200) -> None:
        self._send(code, json.dumps(obj).encode())

    def _body(self) -> Any:
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n) or b"null")

    def _user(self) -> User:
        auth = self.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ").strip()
        user = self.server.tokens.get(token)
        if user is None:
            raise Refused(401, "Unauthorized", "Unauthorized")
        return user

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        self.query = {k: v for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        try:
            for verb, pattern, name in ROUTES:
                if verb != method:
                    continue
                m = pattern.fullmatch(parts.path)
                if m:
                    getattr(self, name)(**m.groupdict())
                    return
            raise Refused(404, "NotFound", "the server could not find the requested resource", {})
        except Refused as exc:
            self._send(exc.code, _status(exc.code, exc.reason, exc.message, exc.details))
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    @property
    def cluster(self) -> Cluster:
        return self.server.cluster

    def _q(self, key: str, default: str = "") -> str:
        return self.query.get(key, [default])[0]

    # --- discovery ----------------------------------------------------------------------------
    def version(self) -> None:
        self._json(
            {
                "major": "1",
                "minor": "32",
                "gitVersion": GIT_VERSION,
                "gitCommit": "0" * 40,
                "gitTreeState": "clean",
                "buildDate": "2025-05-15T08:00:00Z",
                "goVersion": "go1.23.8",
                "compiler": "gc",
                "platform": "linux/amd64",
            }
        )

    def api(self) -> None:
        self._user()
        self._json(discovery.api_versions(f"{self.server.host}:{self.server.port}"))

    def apis(self) -> None:
        self._user()
        self._json(discovery.api_groups())

    def resources(self, gv: str) -> None:
        self._user()
        found = discovery.resource_list(gv)
        if found is None:
            raise Refused(404, "NotFound", "the server could not find the requested resource")
        self._json(found)

    # --- reading ------------------------------------------------------------------------------
    def _list(
        self,
        kind: str,
        resource: str,
        objects: dict[Any, dict[str, Any]],
        ns: str | None,
        group: str = "",
        api: str = "v1",
    ) -> None:
        user = self._user()
        verb = "watch" if self._q("watch") in {"true", "1"} else "list"
        authorize(user, verb, resource, "", ns or "", group)
        if verb == "watch":
            self._watch(objects, ns)
            return
        with self.cluster.lock:
            self.cluster.refresh()
            items = [
                o
                for o in objects.values()
                if (ns is None or o["metadata"].get("namespace") == ns)
                and _labels_match(o["metadata"].get("labels") or {}, self._q("labelSelector"))
                and _fields_match(o, self._q("fieldSelector"))
            ]
            items = sorted(
                items, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"])
            )
            version = str(self.cluster.version)
            if "as=Table" in self.headers.get("Accept", ""):
                self._json(discovery.table(items, kind, version))
                return
            # a list's items carry no kind or apiVersion of their own: the list says them
            bare = [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")} for o in items]
            self._json(
                {
                    "kind": f"{kind}List",
                    "apiVersion": api,
                    "metadata": {"resourceVersion": version},
                    "items": bare,
                }
            )

    def _watch(self, objects: dict[Any, dict[str, Any]], ns: str | None) -> None:
        """Newline-delimited events over chunked encoding until timeoutSeconds (the real
        server's shape; events are found by polling resource versions)."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        since = int(self._q("resourceVersion") or 0)
        deadline = time.monotonic() + min(float(self._q("timeoutSeconds") or 300), 300)
        seen: dict[tuple[str, str], str] = {}
        while time.monotonic() < deadline and not self.server.stopping.is_set():
            events = []
            with self.cluster.lock:
                self.cluster.refresh()
                current = {}
                for o in objects.values():
                    meta = o["metadata"]
                    if (
                        (ns is None or meta.get("namespace") == ns)
                        and _fields_match(o, self._q("fieldSelector"))
                        and _labels_match(meta.get("labels") or {}, self._q("labelSelector"))
                    ):
                        key = (meta.get("namespace", ""), meta["name"])
                        current[key] = o
                        rv = meta["resourceVersion"]
                        if seen.get(key) != rv and int(rv) > since:
                            events.append(
                                {"type": "ADDED" if key not in seen else "MODIFIED", "object": o}
                            )
                        seen[key] = rv
                for key in [k for k in seen if k not in current]:
                    del seen[key]
            for ev in events:
                line = json.dumps(ev).encode() + b"\n"
                try:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    return
            time.sleep(0.1)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(b"0\r\n\r\n")

    def _get(
        self, resource: str, obj: dict[str, Any] | None, name: str, ns: str = "", group: str = ""
    ) -> None:
        authorize(self._user(), "get", resource, name, ns, group)
        if obj is None:
            raise not_found(resource.split("/")[0], name, group)
        self._json(obj)

    def list_pods(self, ns: str | None = None) -> None:
        self._list("Pod", "pods", self.cluster.pods, ns)

    def get_pod(self, ns: str, name: str) -> None:
        self.cluster.refresh()
        self._get("pods", self.cluster.pods.get((ns, name)), name, ns)

    def list_services(self, ns: str | None = None) -> None:
        self._list("Service", "services", self.cluster.services, ns)

    def get_service(self, ns: str, name: str) -> None:
        self._get("services", self.cluster.services.get((ns, name)), name, ns)

    def list_slices(self, ns: str | None = None) -> None:
        self._list(
            "EndpointSlice",
            "endpointslices",
            self.cluster.slices,
            ns,
            "discovery.k8s.io",
            "discovery.k8s.io/v1",
        )

    def list_nodes(self) -> None:
        self._list("Node", "nodes", self.cluster.nodes, None)

    def get_node(self, name: str) -> None:
        self._get("nodes", self.cluster.nodes.get(name), name)

    def list_namespaces(self) -> None:
        self._list("Namespace", "namespaces", self.cluster.namespaces, None)

    def get_namespace(self, name: str) -> None:
        self._get("namespaces", self.cluster.namespaces.get(name), name)

    def patch_namespace(self, name: str) -> None:
        authorize(self._user(), "patch", "namespaces", name, "")
        obj = self.cluster.namespaces.get(name)
        if obj is None:
            raise not_found("namespaces", name)
        with self.cluster.lock:
            merge(obj, {"metadata": (self._body() or {}).get("metadata", {})})
            obj["metadata"]["resourceVersion"] = self.cluster.bump()
        self._json(obj)

    def list_deployments(self, ns: str | None = None) -> None:
        self._list("Deployment", "deployments", self.cluster.deployments, ns, "apps", "apps/v1")

    def get_deployment(self, ns: str, name: str) -> None:
        self._get("deployments", self.cluster.deployments.get((ns, name)), name, ns, "apps")

    def pod_log(self, ns: str, name: str) -> None:
        """What a container wrote (its tail): kubectl debug falls back to it."""
        authorize(self._user(), "get", "pods/log", name, ns)
        pod = self._pod(ns, name)
        container = self._q("container") or pod["spec"]["containers"][0]["name"]
        run = self.cluster.running.get((ns, name, container))
        log = bytes(run.output.log) if run is not None and run.output is not None else b""
        self._send(200, log, "text/plain")

    # --- changing -----------------------------------------------------------------------------
    def _pod(self, ns: str, name: str) -> dict[str, Any]:
        pod = self.cluster.pods.get((ns, name))
        if pod is None:
            raise not_found("pods", name)
        return pod

    def get_ephemeral(self, ns: str, name: str) -> None:
        if not self.cluster.behaviour.ephemeral_enabled:
            raise Refused(404, "NotFound", "the server could not find the requested resource")
        authorize(self._user(), "get", "pods/ephemeralcontainers", name, ns)
        self._json(self._pod(ns, name))

    def patch_ephemeral(self, ns: str, name: str) -> None:
        if not self.cluster.behaviour.ephemeral_enabled:
            raise Refused(404, "NotFound", "the server could not find the requested resource")
        authorize(self._user(), "patch", "pods/ephemeralcontainers", name, ns)
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip()
        body = self._body()
        with self.cluster.lock:
            pod = self._pod(ns, name)
            old = pod["spec"].get("ephemeralContainers", [])
            if ctype == "application/strategic-merge-patch+json":
                new = [dict(c) for c in old]
                for c in (body.get("spec") or {}).get("ephemeralContainers") or []:
                    at = next((i for i, o in enumerate(new) if o["name"] == c.get("name")), None)
                    if at is None:
                        new.append(c)
                    else:
                        new[at] = merge(dict(new[at]), c)
            elif ctype == "application/json-patch+json":
                new = self._json_patch(old, body)
            elif ctype == "application/merge-patch+json":
                new = (body.get("spec") or {}).get("ephemeralContainers") or []
            else:
                raise Refused(
                    415, "UnsupportedMediaType", f"the media type {ctype!r} is not supported"
                )
            new = validate_ephemeral_update(pod, new)
            added = [c for c in new if c["name"] not in {o["name"] for o in old}]
            spec = {**pod["spec"], "ephemeralContainers": new}
            check_pod_security(self.cluster.namespaces[ns], name, spec)
            pod["spec"]["ephemeralContainers"] = new
            for c in added:
                self.cluster.start_ephemeral(ns, name, c)
            self._json(pod)

    @staticmethod
    def _json_patch(old: list[dict[str, Any]], ops: Any) -> list[dict[str, Any]]:
        new = [dict(c) for c in old]
        for op in ops if isinstance(ops, list) else []:
            path, value = op.get("path"), op.get("value")
            if op.get("op") != "add":
                raise Refused(422, "Invalid", f"unsupported JSON patch operation {op.get('op')}")
            if path == "/spec/ephemeralContainers":
                new = list(value)
            elif path == "/spec/ephemeralContainers/-":
                if not old and not new:
                    raise Refused(
                        422,
                        "Invalid",
                        "the server rejected our request due to an error in our request",
                    )
                new.append(value)
            else:
                raise Refused(422, "Invalid", f"path {path} cannot be patched here")
        return new

    def create_pod(self, ns: str) -> None:
        body = self._body() or {}
        name = (body.get("metadata") or {}).get("name") or ""
        authorize(self._user(), "create", "pods", "", ns)
        with self.cluster.lock:
            if ns not in self.cluster.namespaces:
                raise not_found("namespaces", ns)
            if name and (ns, name) in self.cluster.pods:
                raise Refused(
                    409,
                    "AlreadyExists",
                    f'pods "{name}" already exists',
                    {"name": name, "kind": "pods"},
                )
            body.setdefault("metadata", {})["namespace"] = ns
            shown = name or (body["metadata"].get("generateName", "") + "xxxxx")
            check_pod_security(self.cluster.namespaces[ns], shown, body.get("spec") or {})
            volumes = (body.get("spec") or {}).get("volumes") or []
            if self.cluster.behaviour.refuse_host_path and any("hostPath" in v for v in volumes):
                raise Refused(  # as the real server words a ValidatingAdmissionPolicy's denial
                    422,
                    "Invalid",
                    f'pods "{shown}" is forbidden: ValidatingAdmissionPolicy '
                    "'ktrace-test-no-host-path' with binding 'ktrace-test-no-host-path' denied "
                    "request: hostPath volumes are not allowed",
                )
            if self._q("dryRun") == "All":  # judged, admitted, and kept nowhere
                self._json({**body, "kind": "Pod", "apiVersion": "v1",
                            "status": {"phase": "Pending"}}, 201)  # fmt: skip
                return
            self._json(self.cluster.create_pod(body), 201)

    def access_review(self) -> None:
        """SelfSubjectAccessReview: the same rules `authorize` enforces, asked."""
        user = self._user()
        body = self._body() or {}
        attrs = (body.get("spec") or {}).get("resourceAttributes") or {}
        resource = attrs.get("resource", "")
        if attrs.get("subresource"):
            resource = f"{resource}/{attrs['subresource']}"
        try:
            authorize(user, attrs.get("verb", ""), resource, attrs.get("name", ""),
                      attrs.get("namespace", ""), attrs.get("group", ""))  # fmt: skip
            allowed = True
        except Refused:
            allowed = False
        status = {"allowed": allowed} if allowed else {"allowed": False, "reason": ""}
        self._json(
            {"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
             "metadata": {"creationTimestamp": None}, "spec": body.get("spec") or {},
             "status": status},
            201,
        )  # fmt: skip

    def self_review(self) -> None:
        user = self._user()
        groups = ["system:masters"] if user.admin else ["ktrace-lab:viewers"]
        self._json(
            {"kind": "SelfSubjectReview", "apiVersion": "authentication.k8s.io/v1",
             "metadata": {"creationTimestamp": None},
             "status": {"userInfo": {"username": user.name,
                                     "groups": [*groups, "system:authenticated"]}}},
            201,
        )  # fmt: skip

    def delete_pod(self, ns: str, name: str) -> None:
        authorize(self._user(), "delete", "pods", name, ns)
        with self.cluster.lock:
            self._pod(ns, name)
            self._json(self.cluster.delete_pod(ns, name))

    # --- exec ---------------------------------------------------------------------------------
    def exec_post(self, ns: str, name: str, sub: str) -> None:
        authorize(self._user(), "create", f"pods/{sub}", name, ns)
        raise Refused(400, "BadRequest", "Upgrade request required")

    def exec_ws(self, ns: str, name: str, sub: str) -> None:
        authorize(self._user(), "create", f"pods/{sub}", name, ns)
        if "websocket" not in self.headers.get("Upgrade", "").lower():
            raise Refused(400, "BadRequest", "Upgrade request required")
        with self.cluster.lock:
            self.cluster.refresh()
            pod = self._pod(ns, name)
            spec = pod["spec"]
            if not spec.get("nodeName"):
                raise Refused(400, "BadRequest", f"pod {name} does not have a host assigned")
            phase = pod["status"].get("phase")
            if phase in {"Succeeded", "Failed"}:
                raise Refused(
                    400,
                    "BadRequest",
                    f"cannot exec into a container in a completed pod; current phase is {phase}",
                )
            names = [c["name"] for c in [*spec["containers"], *spec.get("ephemeralContainers", [])]]
            container = self._q("container") or spec["containers"][0]["name"]
            if container not in names:
                raise Refused(
                    400, "BadRequest", f"container {container} is not valid for pod {name}"
                )
            run = self.cluster.running.get((ns, name, container))
            if run is None and container in {c["name"] for c in spec["containers"]}:
                netns = self.cluster.pod_netns(ns, name)
                run = Running(Sandbox(netns or ""))  # a lab pod's app: its netns, no cgroup
                self.cluster.running[(ns, name, container)] = run
            if run is None or not run.alive():
                raise Refused(
                    500,
                    "InternalError",
                    f'unable to upgrade connection: container not found ("{container}")',
                )
        protocol = choose_protocol(self.headers.get("Sec-WebSocket-Protocol", ""))
        if protocol is None:
            raise Refused(403, "Forbidden", "websocket: no supported subprotocol offered")
        command = self.query.get("command", [])
        flag = {
            k: self._q(k).lower() in {"true", "1"} for k in ("stdin", "stdout", "stderr", "tty")
        }
        if sub == "attach" and (run.output is None or run.main is None):
            raise Refused(400, "BadRequest", f"container {container} has no process to attach to")
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept_key(self.headers["Sec-WebSocket-Key"]))
        self.send_header("Sec-WebSocket-Protocol", protocol)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        if sub == "attach":
            self._attach(run, flag)
        else:
            self._stream(run, command, flag, protocol)

    def _attach(self, run: Any, flag: dict[str, bool]) -> None:
        """The container's own process: its output from now on, our stdin to it (when the
        container was made with stdin), its exit status at the end."""
        sock = self.connection
        records = run.output.subscribe()
        sel = selectors.DefaultSelector()
        sel.register(records, selectors.EVENT_READ)
        sel.register(sock, selectors.EVENT_READ)
        reader, pending = FrameReader(sock), b""
        stdin = run.main.stdin if flag["stdin"] else None
        try:
            while True:
                for key, _ in sel.select(timeout=1):
                    if key.fileobj is sock:
                        if not reader.feed():
                            return
                        for f in reader.frames():
                            if f.opcode == OP_PING:
                                sock.sendall(frame(OP_PONG, f.payload))
                            elif f.opcode == OP_CLOSE:
                                return
                            elif f.opcode == OP_BINARY and f.payload[:1] == b"\x00" and stdin:
                                stdin.write(f.payload[1:])
                                stdin.flush()
                            elif f.payload[:2] == b"\xff\x00" and stdin:
                                stdin.close()
                        continue
                    data = os.read(records, 1 << 20)
                    if not data:
                        # the kubelet's attach ends with Success whatever the exit code:
                        # that is the container's status, not the stream's
                        run.main.wait()
                        self._finish(sock, 0)
                        return
                    pending += data
                    while len(pending) >= 5:
                        n = int.from_bytes(pending[1:5], "big")
                        if len(pending) < 5 + n:
                            break
                        channel = pending[0]
                        if flag["stdout" if channel == 1 else "stderr"] or flag["tty"]:
                            sock.sendall(frame(OP_BINARY, bytes([channel]) + pending[5 : 5 + n]))
                        pending = pending[5 + n :]
        except OSError:
            pass
        finally:
            sel.close()
            os.close(records)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    @staticmethod
    def _finish(sock: socket.socket, code: int) -> None:
        """Channel 3's Status as the kubelet words it, then a normal close."""
        if code == 0:
            status: dict[str, Any] = {"metadata": {}, "status": "Success"}
        else:
            status = {
                "metadata": {},
                "status": "Failure",
                "message": f"command terminated with non-zero exit code: exit status {code}",
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
            }
        sock.sendall(frame(OP_BINARY, b"\x03" + json.dumps(status).encode()))
        sock.sendall(frame(OP_CLOSE, (1000).to_bytes(2, "big")))

    def _stream(self, run: Any, command: list[str], flag: dict[str, bool], protocol: str) -> None:
        sock = self.connection
        try:
            proc = subprocess.Popen(
                run.sandbox.argv(command),
                stdin=subprocess.PIPE if flag["stdin"] else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT if flag["tty"] else subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            sock.sendall(frame(OP_BINARY, b"\x03" + _status(500, "InternalError", str(exc))))
            return
        run.execs.append(proc)
        cut = self.server.cluster.behaviour.cut_exec_after_bytes
        sent = 0
        sel = selectors.DefaultSelector()
        channels = {proc.stdout.fileno(): 1}  # type: ignore[union-attr]
        if proc.stderr is not None:
            channels[proc.stderr.fileno()] = 2
        for fd in channels:
            sel.register(fd, selectors.EVENT_READ)
        sel.register(sock, selectors.EVENT_READ)
        reader = FrameReader(sock)
        client_gone = False
        try:
            while channels and not client_gone:
                for key, _ in sel.select(timeout=1):
                    if key.fileobj is sock:
                        if not reader.feed():
                            client_gone = True
                            break
                        while isinstance(sock, ssl.SSLSocket) and sock.pending():
                            reader.feed()
                        for f in reader.frames():
                            if f.opcode == OP_PING:
                                sock.sendall(frame(OP_PONG, f.payload))
                            elif f.opcode == OP_CLOSE:
                                client_gone = True
                            elif f.opcode == OP_BINARY and f.payload and proc.stdin:
                                if f.payload[0] == 0:
                                    proc.stdin.write(f.payload[1:])
                                    proc.stdin.flush()
                                elif f.payload[:2] == b"\xff\x00" and protocol.startswith("v5"):
                                    proc.stdin.close()
                        continue
                    fd = key.fd
                    data = os.read(fd, 1 << 20)
                    if not data:
                        sel.unregister(fd)
                        del channels[fd]
                        continue
                    sock.sendall(frame(OP_BINARY, bytes([channels[fd]]) + data))
                    sent += len(data)
                    if cut is not None and sent >= cut:
                        # a lost connection: the process goes on, as it would on a node
                        sock.shutdown(socket.SHUT_RDWR)
                        return
            if client_gone:
                return
            self._finish(sock, proc.wait())
        except OSError:
            pass
        finally:
            sel.close()
            for pipe in (proc.stdout, proc.stderr, proc.stdin):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _self_signed(where: Path, host: str) -> Path:
    cert = where / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(where / "key.pem"),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=ktrace-lab-apiserver",
            "-addext",
            f"subjectAltName=IP:{host},DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    return cert


ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    (m, re.compile(p), h)
    for m, p, h in [
        ("GET", r"/version/?", "version"),
        ("GET", r"/api/?", "api"),
        ("GET", r"/apis/?", "apis"),
        ("GET", r"/api/(?P<gv>v1)/?", "resources"),
        ("GET", r"/apis/(?P<gv>[^/]+/[^/]+)/?", "resources"),
        ("GET", r"/api/v1/namespaces", "list_namespaces"),
        ("GET", r"/api/v1/namespaces/(?P<name>[^/]+)", "get_namespace"),
        ("PATCH", r"/api/v1/namespaces/(?P<name>[^/]+)", "patch_namespace"),
        ("GET", r"/api/v1/nodes", "list_nodes"),
        ("GET", r"/api/v1/nodes/(?P<name>[^/]+)", "get_node"),
        ("GET", r"/api/v1/pods", "list_pods"),
        ("GET", NS + r"/pods", "list_pods"),
        ("POST", NS + r"/pods", "create_pod"),
        ("GET", NS + r"/pods/(?P<name>[^/]+)", "get_pod"),
        ("DELETE", NS + r"/pods/(?P<name>[^/]+)", "delete_pod"),
        ("GET", NS + r"/pods/(?P<name>[^/]+)/ephemeralcontainers", "get_ephemeral"),
        ("PATCH", NS + r"/pods/(?P<name>[^/]+)/ephemeralcontainers", "patch_ephemeral"),
        ("GET", NS + r"/pods/(?P<name>[^/]+)/(?P<sub>exec|attach)", "exec_ws"),
        ("POST", NS + r"/pods/(?P<name>[^/]+)/(?P<sub>exec|attach)", "exec_post"),
        ("GET", NS + r"/pods/(?P<name>[^/]+)/log", "pod_log"),
        ("GET", r"/api/v1/services", "list_services"),
        ("GET", NS + r"/services", "list_services"),
        ("GET", NS + r"/services/(?P<name>[^/]+)", "get_service"),
        ("GET", r"/apis/discovery.k8s.io/v1/endpointslices", "list_slices"),
        (
            "GET",
            r"/apis/discovery.k8s.io/v1/namespaces/(?P<ns>[^/]+)/endpointslices",
            "list_slices",
        ),
        ("POST", r"/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", "access_review"),
        ("POST", r"/apis/authentication.k8s.io/v1/selfsubjectreviews", "self_review"),
        ("GET", r"/apis/apps/v1/deployments", "list_deployments"),
        ("GET", r"/apis/apps/v1/namespaces/(?P<ns>[^/]+)/deployments", "list_deployments"),
        (
            "GET",
            r"/apis/apps/v1/namespaces/(?P<ns>[^/]+)/deployments/(?P<name>[^/]+)",
            "get_deployment",
        ),
    ]
]


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, lab: dict[str, Any], host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__((host, port), Handler)
        self.certs = Path(tempfile.mkdtemp(prefix="ktrace-apiserver-"))
        self.cert = _self_signed(self.certs, host)
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.load_cert_chain(self.cert, self.certs / "key.pem")
        self.tls.set_alpn_protocols(["http/1.1"])  # WebSockets need HTTP/1.1, never h2
        self.host, self.port = host, self.server_address[1]
        self.cluster = Cluster(lab)
        self.stopping = threading.Event()
        self.tokens = {
            secrets.token_urlsafe(24): User("kubernetes-admin", True),
            secrets.token_urlsafe(24): User("viewer", False),
        }
        self.thread: threading.Thread | None = None

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        # the handshake happens in the handler's thread, on its first read
        return self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        if os.environ.get("KTRACE_APISERVER_LOG"):
            super().handle_error(request, client_address)

    @property
    def behaviour(self) -> Behaviour:
        return self.cluster.behaviour

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def start(self) -> ApiServer:
        self.thread = threading.Thread(target=self.serve_forever, name="apiserver", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()
        self.cluster.stop_all()
        shutil.rmtree(self.certs, ignore_errors=True)

    def kubeconfig(self, path: Path) -> Path:
        """Two users: a cluster admin (context `ktrace-lab`) and a viewer (`ktrace-lab-viewer`)."""
        users = {u.name: t for t, u in self.tokens.items()}
        contexts = [("ktrace-lab", "kubernetes-admin"), ("ktrace-lab-viewer", "viewer")]
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "ktrace-lab",
                    "cluster": {
                        "server": self.url,
                        "certificate-authority-data": base64.b64encode(
                            self.cert.read_bytes()
                        ).decode(),
                    },
                }
            ],
            "users": [{"name": n, "user": {"token": t}} for n, t in users.items()],
            "contexts": [
                {"name": c, "context": {"cluster": "ktrace-lab", "user": u, "namespace": "default"}}
                for c, u in contexts
            ],
            "current-context": "ktrace-lab",
        }
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(config, fh, indent=1)
        return path
