"""Connecting to the cluster, and turning what the API server says no with into one sentence.

The only place (with the rest of `kube/`) that imports `kubernetes`. Objects are read as plain
JSON (`_preload_content=False`): the v37 models reject objects that miss a field they mark
required, and ktrace only needs a few fields.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ktrace.errors import ClusterError, UsageError

PSA = re.compile(r'violates PodSecurity "(?P<level>[a-z]+):(?P<version>[^"]+)": (?P<detail>.*)$')
RBAC = re.compile(
    r'User "(?P<user>[^"]*)" cannot (?P<verb>\w+) resource "(?P<resource>[^"]+)" in API group '
    r'"(?P<group>[^"]*)"(?: in the namespace "(?P<ns>[^"]+)")?'
)


@dataclass(frozen=True)
class KubeFlags:
    """kubectl's global flags that ktrace honours."""

    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    request_timeout: float = 30.0


class Api:
    """An isolated client for one context (never the global configuration, never written back)."""

    def __init__(self, flags: KubeFlags) -> None:
        import urllib3
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException

        path = flags.kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        try:
            contexts, active = config.list_kube_config_contexts(config_file=path)
            chosen = active
            if flags.context:
                chosen = next((c for c in contexts if c["name"] == flags.context), None)
                if chosen is None:
                    names = ", ".join(c["name"] for c in contexts)
                    raise UsageError(
                        f'context "{flags.context}" is not in {path}', f"known contexts: {names}"
                    )
            self.api_client = config.new_client_from_config(
                config_file=path, context=flags.context, persist_config=False
            )
            if not self.api_client.configuration.verify_ssl:
                # the kubeconfig asked for insecure-skip-tls-verify: kubectl says nothing either
                urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        except (ConfigException, OSError) as exc:
            raise ClusterError(
                f"cannot load a kubeconfig from {path}: {exc}",
                "pass --kubeconfig FILE or set KUBECONFIG",
            ) from None
        self.context = chosen["name"] if chosen else ""
        self.cluster = (chosen or {}).get("context", {}).get("cluster", "")
        self.namespace = (
            flags.namespace or (chosen or {}).get("context", {}).get("namespace") or "default"
        )
        self.timeout = flags.request_timeout
        # the exec WebSocket's connect and handshake too (the client sets no timeout there:
        # a stalled API server would hold a stop forever)
        import websocket

        websocket.setdefaulttimeout(flags.request_timeout)
        self.core = client.CoreV1Api(self.api_client)
        self.apps = client.AppsV1Api(self.api_client)
        self.discovery = client.DiscoveryV1Api(self.api_client)

    def call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        """A request whose JSON answer is returned as plain data."""
        with api_errors():
            resp = method(*args, _preload_content=False, _request_timeout=self.timeout, **kwargs)
            return json.loads(resp.data)

    def in_namespace(self, namespace: str) -> Api:
        """The same client, looking in another namespace."""
        other = copy.copy(self)
        other.namespace = namespace
        return other

    @property
    def server(self) -> str:
        return str(self.api_client.configuration.host)


def status_of(exc: Exception) -> tuple[int, dict[str, Any]]:
    """HTTP code and the Status object of a refusal, from a request or a WebSocket handshake
    (the handshake puts both into `reason`: 'Handshake status 403 ... -+-+- {...} -+-+- body')."""
    code = int(getattr(exc, "status", 0) or 0)
    body = getattr(exc, "body", None)
    reason = str(getattr(exc, "reason", "") or exc)
    if code == 0:
        m = re.search(r"Handshake status (\d+)", reason)
        if m:
            code = int(m.group(1))
            body = reason.rsplit("-+-+- ", 1)[-1]
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    try:
        status = json.loads(body) if body else {}
    except ValueError:
        status = {}
    if not isinstance(status, dict):
        status = {}
    status.setdefault("message", reason)
    return code, status


class PodSecurityError(ClusterError):
    """Pod Security admission refused a container; `level` is the namespace's enforce level."""

    def __init__(self, message: str, hint: str, level: str) -> None:
        super().__init__(message, hint)
        self.level = level


def explain(code: int, status: dict[str, Any]) -> ClusterError:
    message = str(status.get("message", "")).strip()
    m = PSA.search(message)
    if code == 403 and m:
        return PodSecurityError(
            f'PodSecurity "{m["level"]}" refuses this: {m["detail"]}',
            f"the namespace's label pod-security.kubernetes.io/enforce={m['level']} sets it",
            m["level"],
        )
    m = RBAC.search(message)
    if code == 403 and m:
        where = f' in namespace "{m["ns"]}"' if m["ns"] else ""
        return ClusterError(
            f'RBAC: user "{m["user"]}" may not {m["verb"]} {m["resource"]}{where}',
            f"ktrace needs {m['verb']} on {m['resource']}; ask for it, or use another --context",
        )
    if code == 401:
        return ClusterError(
            "the API server did not accept your credentials",
            "log in again (kubectl get pods should work first)",
        )
    if code >= 400 and status.get("kind") != "Status":
        return ClusterError(
            f"the server answered {code} {message} without a Kubernetes status",
            "is the kubeconfig's server a Kubernetes API server? check --context and --kubeconfig",
        )
    return ClusterError(message or f"the API server answered {code}")


@contextlib.contextmanager
def api_errors() -> Iterator[None]:
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        yield
    except ApiException as exc:
        raise explain(*status_of(exc)) from None
    except HTTPError as exc:
        raise unreachable(exc) from None


REASONS = (  # what urllib3 and the OS say, as one short phrase
    ("CERTIFICATE_VERIFY_FAILED", "its TLS certificate is not trusted"),
    ("Connection refused", "connection refused"),
    ("timed out", "timed out"),
    ("Name or service not known", "the name does not resolve"),
    ("Temporary failure in name resolution", "the name does not resolve"),
    ("No route to host", "no route to host"),
    ("Network is unreachable", "network unreachable"),
)


def unreachable(exc: Exception) -> ClusterError:
    """One sentence for a failed connection: the server as the kubeconfig names it and why,
    without urllib3's retry and pool wording."""
    pool = getattr(exc, "pool", None)
    where = f" at {pool.scheme}://{pool.host}:{pool.port}" if pool is not None else ""
    text = str(getattr(exc, "reason", None) or exc)
    why = next((short for needle, short in REASONS if needle in text), None)
    if why is None:
        errno = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
        why = errno.group(1).strip() if errno else type(exc).__name__
    return ClusterError(
        f"cannot reach the API server{where}: {why}", "check --context and --kubeconfig"
    )
