"""What the user may do, asked before anything is created: a refusal half-way through a capture
leaves things to clean up and says less than a refusal up front. The API server answers
SelfSubjectAccessReview (and, for the user's name, SelfSubjectReview) from the same RBAC rules
it enforces."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ktrace.errors import ClusterError
from ktrace.kube.api import Api


@dataclass(frozen=True)
class Permission:
    """A verb on a resource (subresource after '/') in a namespace ('' for cluster scope)."""

    verb: str
    resource: str
    namespace: str = ""
    group: str = ""

    def __str__(self) -> str:
        where = f' in namespace "{self.namespace}"' if self.namespace else ""
        return f"{self.verb} {self.resource}{where}"


def pod_side(namespace: str) -> tuple[Permission, ...]:
    """An ephemeral container in a pod and commands run in it."""
    return (
        Permission("patch", "pods/ephemeralcontainers", namespace),
        Permission("create", "pods/exec", namespace),
    )


def node_side(namespace: str) -> tuple[Permission, ...]:
    """A node debug pod, commands in it, and its removal."""
    return (
        Permission("create", "pods", namespace),
        Permission("delete", "pods", namespace),
        Permission("create", "pods/exec", namespace),
    )


def denied(api: Api, wanted: tuple[Permission, ...]) -> list[Permission]:
    """Those of `wanted` the cluster says no to. A cluster that cannot be asked (the review
    API missing or itself forbidden) refuses nothing here: the requests will say."""
    from kubernetes import client

    reviews = client.AuthorizationV1Api(api.api_client)
    out = []
    for p in wanted:
        resource, _, sub = p.resource.partition("/")
        attributes: dict[str, Any] = {"verb": p.verb, "resource": resource, "group": p.group}
        if sub:
            attributes["subresource"] = sub
        if p.namespace:
            attributes["namespace"] = p.namespace
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attributes},
        }
        try:
            answer = api.call(reviews.create_self_subject_access_review, body)
        except ClusterError:
            return []
        if not (answer.get("status") or {}).get("allowed"):
            out.append(p)
    return out


def user_name(api: Api) -> str | None:
    """Who the cluster takes the user for (SelfSubjectReview, Kubernetes 1.28+), or None."""
    from kubernetes import client

    reviews = client.AuthenticationV1Api(api.api_client)
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    try:
        review = api.call(reviews.create_self_subject_review, body)
    except ClusterError:
        return None
    info = (review.get("status") or {}).get("userInfo") or {}
    return info.get("username") or None


def refusal(api: Api, missing: list[Permission], needed_for: str) -> ClusterError:
    """One sentence naming every missing permission and what it was needed for."""
    who = user_name(api)
    subject = f'user "{who}"' if who else "your user"
    listed = " nor ".join(str(p) for p in missing)
    return ClusterError(
        f"RBAC: {subject} may not {listed}",
        f"ktrace needs {'them' if len(missing) > 1 else 'it'} {needed_for}; ask for "
        f"{'them' if len(missing) > 1 else 'it'}, or use another --context",
    )
