"""What the apiserver refuses before anything runs: RBAC, Pod Security admission, and the
validation of ephemeral containers, each worded as the real server words it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BASELINE_CAPS = {
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
}
LEVELS = ("privileged", "baseline", "restricted")
EPHEMERAL_FIELDS = {
    "name",
    "image",
    "command",
    "args",
    "workingDir",
    "envFrom",
    "env",
    "volumeMounts",
    "volumeDevices",
    "terminationMessagePath",
    "terminationMessagePolicy",
    "imagePullPolicy",
    "securityContext",
    "stdin",
    "stdinOnce",
    "tty",
    "targetContainerName",
    "resources",
}
FORBIDDEN_WHEN_SET = ("ports", "livenessProbe", "readinessProbe", "startupProbe", "lifecycle")


class Refused(Exception):
    def __init__(
        self, code: int, reason: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}


# --- RBAC ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class User:
    name: str
    admin: bool


READ_VERBS = {"get", "list", "watch"}


def authorize(
    user: User, verb: str, resource: str, name: str, namespace: str, group: str = ""
) -> None:
    """A cluster-admin, and a viewer who may read namespaced objects (and namespaces) but no
    subresource, no node, and change nothing: what the real `view` ClusterRole grants."""
    if user.admin or (verb in READ_VERBS and "/" not in resource and resource != "nodes"):
        return
    kind = resource.split("/")[0]
    where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
    subject = f'{kind} "{name}" is forbidden' if name else f"{kind} is forbidden"
    raise Refused(
        403,
        "Forbidden",
        f'{subject}: User "{user.name}" cannot {verb} resource "{resource}" in API group '
        f'"{group}"{where}',
        {"name": name, "kind": kind},
    )


# --- Pod Security ----------------------------------------------------------------------------
def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        *spec.get("initContainers", []),
        *spec.get("containers", []),
        *spec.get("ephemeralContainers", []),
    ]


def _who(names: list[str]) -> str:
    quoted = ", ".join(f'"{n}"' for n in names)
    return f"container {quoted}" if len(names) == 1 else f"containers {quoted}"


def pod_security_violations(spec: dict[str, Any], level: str) -> list[str]:
    if level == "privileged":
        return []
    out = []
    by_caps: dict[tuple[str, ...], list[str]] = {}
    for c in _containers(spec):
        added = ((c.get("securityContext") or {}).get("capabilities") or {}).get("add") or []
        bad = tuple(sorted(cap for cap in added if cap not in BASELINE_CAPS))
        if bad:
            by_caps.setdefault(bad, []).append(c["name"])
    for bad, names in by_caps.items():
        caps = ", ".join(f'"{c}"' for c in bad)
        out.append(
            f"non-default capabilities ({_who(names)} must not include {caps} in "
            "securityContext.capabilities.add)"
        )
    hosts = [f"{k}=true" for k in ("hostNetwork", "hostPID", "hostIPC") if spec.get(k)]
    if hosts:
        out.append(f"host namespaces ({', '.join(hosts)})")
    paths = [v["name"] for v in spec.get("volumes", []) if "hostPath" in v]
    if paths:
        out.append(
            f"hostPath volumes ({', '.join(f'volume {n!r}' for n in paths)})".replace("'", '"')
        )
    privileged = [
        c["name"] for c in _containers(spec) if (c.get("securityContext") or {}).get("privileged")
    ]
    if privileged:
        out.append(f"privileged ({_who(privileged)} must not set securityContext.privileged=true)")
    if level == "restricted":
        loose = [
            c["name"]
            for c in _containers(spec)
            if (c.get("securityContext") or {}).get("allowPrivilegeEscalation") is not False
        ]
        if loose:
            out.append(
                f"allowPrivilegeEscalation != false ({_who(loose)} must set "
                "securityContext.allowPrivilegeEscalation=false)"
            )
        undropped = [
            c["name"]
            for c in _containers(spec)
            if "ALL"
            not in (((c.get("securityContext") or {}).get("capabilities") or {}).get("drop") or [])
        ]
        if undropped:
            out.append(
                f"unrestricted capabilities ({_who(undropped)} must set "
                'securityContext.capabilities.drop=["ALL"])'
            )
        pod_nonroot = (spec.get("securityContext") or {}).get("runAsNonRoot") is True
        root = [
            c["name"]
            for c in _containers(spec)
            if not pod_nonroot and (c.get("securityContext") or {}).get("runAsNonRoot") is not True
        ]
        if root:
            out.append(
                f"runAsNonRoot != true (pod or {_who(root)} must set "
                "securityContext.runAsNonRoot=true)"
            )
    return out


def check_pod_security(namespace: dict[str, Any], pod_name: str, spec: dict[str, Any]) -> None:
    labels = namespace["metadata"].get("labels") or {}
    level = labels.get("pod-security.kubernetes.io/enforce", "privileged")
    if level not in LEVELS:
        level = "restricted"
    version = labels.get("pod-security.kubernetes.io/enforce-version", "latest")
    found = pod_security_violations(spec, level)
    if found:
        raise Refused(
            403,
            "Forbidden",
            f'pods "{pod_name}" is forbidden: violates PodSecurity "{level}:{version}": '
            + ", ".join(found),
            {"name": pod_name, "kind": "pods"},
        )


# --- ephemeral container validation ----------------------------------------------------------
def _invalid(pod: str, causes: list[tuple[str, str, str]]) -> Refused:
    text = "; ".join(f"{field}: {message}" for _, field, message in causes)
    if len(causes) > 1:
        text = f"[{', '.join(f'{f}: {m}' for _, f, m in causes)}]"
    return Refused(
        422,
        "Invalid",
        f'Pod "{pod}" is invalid: {text}',
        {
            "name": pod,
            "kind": "Pod",
            "causes": [{"reason": r, "message": m, "field": f} for r, f, m in causes],
        },
    )


def validate_ephemeral_update(
    pod: dict[str, Any], new: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The ephemeral containers after the update, or Refused as ValidatePodEphemeralContainers-
    Update and validateEphemeralContainers would."""
    name = pod["metadata"]["name"]
    if "kubernetes.io/config.mirror" in (pod["metadata"].get("annotations") or {}):
        raise _invalid(
            name,
            [
                (
                    "FieldValueForbidden",
                    "[]",
                    "Forbidden: static pods do not support ephemeral containers",
                )
            ],
        )
    old = {c["name"]: c for c in pod["spec"].get("ephemeralContainers", [])}
    new_names = [c.get("name", "") for c in new]
    gone = [n for n in old if n not in new_names]
    if gone:
        raise _invalid(
            name,
            [
                (
                    "FieldValueForbidden",
                    "spec.ephemeralContainers",
                    "Forbidden: existing ephemeral containers "
                    + ", ".join(f'"{n}"' for n in gone)
                    + " may not be removed",
                )
            ],
        )
    causes = []
    regular = {
        c["name"] for c in [*pod["spec"]["containers"], *pod["spec"].get("initContainers", [])]
    }
    seen: set[str] = set()
    for i, c in enumerate(new):
        at = f"spec.ephemeralContainers[{i}]"
        cname = c.get("name", "")
        if cname in old:
            if c != old[cname]:
                causes.append(
                    (
                        "FieldValueForbidden",
                        "spec.ephemeralContainers",
                        f'Forbidden: existing ephemeral containers "{cname}" may not be changed',
                    )
                )
            seen.add(cname)
            continue
        if not cname:
            causes.append(("FieldValueRequired", f"{at}.name", "Required value"))
        elif cname in seen or cname in regular:
            causes.append(("FieldValueDuplicate", f"{at}.name", f'Duplicate value: "{cname}"'))
        seen.add(cname)
        if not c.get("image"):
            causes.append(("FieldValueRequired", f"{at}.image", "Required value"))
        for key in FORBIDDEN_WHEN_SET:
            if c.get(key):
                causes.append(
                    (
                        "FieldValueForbidden",
                        f"{at}.{key}",
                        "Forbidden: cannot be set for an Ephemeral Container",
                    )
                )
        if c.get("resources"):
            causes.append(
                (
                    "FieldValueForbidden",
                    f"{at}.resources",
                    "Forbidden: cannot be set for an Ephemeral Container",
                )
            )
        target = c.get("targetContainerName")
        if target and target not in regular:
            causes.append(
                ("FieldValueNotFound", f"{at}.targetContainerName", f'Not found: "{target}"')
            )
    if causes:
        raise _invalid(name, causes)
    return new
