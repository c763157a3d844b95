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


def _who(names: list[str], one: str = "container", many: str = "containers") -> str:
    quoted = ", ".join(f'"{n}"' for n in names)
    return f"{one} {quoted}" if len(names) == 1 else f"{many} {quoted}"


def _context(c: dict[str, Any]) -> dict[str, Any]:
    return c.get("securityContext") or {}


def _added(c: dict[str, Any]) -> list[str]:
    return list((_context(c).get("capabilities") or {}).get("add") or [])


def _setters(pod: bool, containers: list[str]) -> str:
    return " and ".join([*(["pod"] if pod else []), *([_who(containers)] if containers else [])])


def _baseline(spec: dict[str, Any], restricted: bool) -> list[str]:
    """The baseline checks in the order of their IDs; restricted overrides the capability one."""
    out = []
    caps = sorted({cap for c in _containers(spec) for cap in _added(c) if cap not in BASELINE_CAPS})
    adding = [c["name"] for c in _containers(spec) if set(_added(c)) - BASELINE_CAPS]
    if adding and not restricted:
        out.append(
            f"non-default capabilities ({_who(adding)} must not include "
            f"{', '.join(map(_quote, caps))} in securityContext.capabilities.add)"
        )
    hosts = [f"{k}=true" for k in ("hostNetwork", "hostPID", "hostIPC") if spec.get(k)]
    if hosts:
        out.append(f"host namespaces ({', '.join(hosts)})")
    paths = [v["name"] for v in spec.get("volumes", []) if "hostPath" in v]
    if paths:
        out.append(f"hostPath volumes ({_who(paths, 'volume', 'volumes')})")
    privileged = [c["name"] for c in _containers(spec) if _context(c).get("privileged")]
    if privileged:
        out.append(f"privileged ({_who(privileged)} must not set securityContext.privileged=true)")
    return out


def _restricted(spec: dict[str, Any]) -> list[str]:
    """The restricted checks, in the order of their IDs, worded as pod-security-admission's."""
    out = []
    pod = spec.get("securityContext") or {}
    loose = [
        c["name"]
        for c in _containers(spec)
        if _context(c).get("allowPrivilegeEscalation") is not False
    ]
    if loose:
        out.append(
            f"allowPrivilegeEscalation != false ({_who(loose)} must set "
            "securityContext.allowPrivilegeEscalation=false)"
        )
    undropped = [
        c["name"]
        for c in _containers(spec)
        if "ALL" not in ((_context(c).get("capabilities") or {}).get("drop") or [])
    ]
    extra = sorted(
        {cap for c in _containers(spec) for cap in _added(c) if cap != "NET_BIND_SERVICE"}
    )
    adding = [c["name"] for c in _containers(spec) if set(_added(c)) - {"NET_BIND_SERVICE"}]
    details = []
    if undropped:
        details.append(f'{_who(undropped)} must set securityContext.capabilities.drop=["ALL"]')
    if adding:
        details.append(
            f"{_who(adding)} must not include {', '.join(map(_quote, extra))} in "
            "securityContext.capabilities.add"
        )
    if details:
        out.append(f"unrestricted capabilities ({'; '.join(details)})")
    out.extend(_run_as_non_root(spec, pod))
    root = [c["name"] for c in _containers(spec) if _context(c).get("runAsUser") == 0]
    if pod.get("runAsUser") == 0 or root:
        out.append(
            f"runAsUser=0 ({_setters(pod.get('runAsUser') == 0, root)} must not set runAsUser=0)"
        )
    out.extend(_seccomp(spec, pod))
    return out


def _run_as_non_root(spec: dict[str, Any], pod: dict[str, Any]) -> list[str]:
    pod_false = pod.get("runAsNonRoot") is False
    pod_true = pod.get("runAsNonRoot") is True
    said = [c["name"] for c in _containers(spec) if _context(c).get("runAsNonRoot") is False]
    if pod_false or said:
        return [
            f"runAsNonRoot != true ({_setters(pod_false, said)} must not set "
            "securityContext.runAsNonRoot=false)"
        ]
    unsaid = [
        c["name"]
        for c in _containers(spec)
        if _context(c).get("runAsNonRoot") is None and not pod_true
    ]
    if unsaid:
        return [
            f"runAsNonRoot != true (pod or {_who(unsaid)} must set "
            "securityContext.runAsNonRoot=true)"
        ]
    return []


def _seccomp(spec: dict[str, Any], pod: dict[str, Any]) -> list[str]:
    def kind(context: dict[str, Any]) -> str | None:
        profile = context.get("seccompProfile")
        return None if profile is None else str(profile.get("type", ""))

    good = {"RuntimeDefault", "Localhost"}
    pod_kind = kind(pod)
    pod_bad = pod_kind is not None and pod_kind not in good
    bad = [c["name"] for c in _containers(spec) if kind(_context(c)) not in (None, *good)]
    if pod_bad or bad:
        values = sorted(
            {
                k
                for k in [pod_kind, *(kind(_context(c)) for c in _containers(spec))]
                if k is not None and k not in good
            }
        )
        return [
            f"seccompProfile ({_setters(pod_bad, bad)} must not set "
            f"securityContext.seccompProfile.type to {', '.join(map(_quote, values))})"
        ]
    unset = [
        c["name"] for c in _containers(spec) if kind(_context(c)) is None and pod_kind not in good
    ]
    if unset:
        return [
            f"seccompProfile (pod or {_who(unset)} must set securityContext.seccompProfile."
            'type to "RuntimeDefault" or "Localhost")'
        ]
    return []


def _quote(text: str) -> str:
    return f'"{text}"'


def pod_security_violations(spec: dict[str, Any], level: str) -> list[str]:
    """What pod-security-admission says of a pod at this level: baseline checks, then the
    restricted ones, each group in the order of its check IDs."""
    if level == "privileged":
        return []
    restricted = level == "restricted"
    return _baseline(spec, restricted) + (_restricted(spec) if restricted else [])


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
