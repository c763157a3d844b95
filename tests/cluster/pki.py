"""The cluster's certificates, made with openssl: one CA signs the API server's serving
certificate, each kubelet's, and the client certificates of every component and user (a
client certificate's CN is its user name, its O its groups, as the API server reads them)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

DAYS = "3650"


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def authority(directory: Path) -> KeyPair:
    """The CA, made once: a second `up` keeps the certificates kubeconfigs already hold."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca = KeyPair(directory / "ca.crt", directory / "ca.key")
    if not ca.cert.exists():
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca.key),
            "-out", str(ca.cert), "-days", DAYS, "-subj", "/CN=ktrace-test-cluster-ca",
        )  # fmt: skip
    return ca


def issue(
    ca: KeyPair,
    directory: Path,
    name: str,
    subject: str,
    *,
    hosts: tuple[str, ...] = (),
    server: bool = False,
) -> KeyPair:
    """A key and a certificate signed by `ca`: `subject` as '/CN=user/O=group'; `hosts` (IP
    addresses and DNS names) become its subject alternative names."""
    pair = KeyPair(directory / f"{name}.crt", directory / f"{name}.key")
    if pair.cert.exists():
        return pair
    csr = directory / f"{name}.csr"
    ext = directory / f"{name}.ext"
    alt = ",".join(f"IP:{h}" if h[0].isdigit() or ":" in h else f"DNS:{h}" for h in hosts)
    usage = "serverAuth" if server else "clientAuth"
    ext.write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage={usage}\n" + (f"subjectAltName={alt}\n" if alt else "")
    )
    _openssl(
        "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(pair.key),
        "-out", str(csr), "-subj", subject,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
        "-CAcreateserial", "-out", str(pair.cert), "-days", DAYS, "-extfile", str(ext),
    )  # fmt: skip
    csr.unlink()
    ext.unlink()
    pair.key.chmod(0o600)
    return pair


def service_account_keys(directory: Path) -> KeyPair:
    """The key the API server signs service account tokens with, and its public half."""
    pair = KeyPair(directory / "sa.pub", directory / "sa.key")
    if not pair.key.exists():
        _openssl("genrsa", "-out", str(pair.key), "2048")
        _openssl("rsa", "-in", str(pair.key), "-pubout", "-out", str(pair.cert))
    return pair


def kubeconfig(path: Path, server: str, ca: KeyPair, client: KeyPair, user: str) -> Path:
    """A kubeconfig naming the CA and the client certificate by path (never inlined keys
    copied around); JSON is YAML, so no YAML writer is needed."""
    import json

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "ktrace-test",
                "cluster": {"server": server, "certificate-authority": str(ca.cert)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {"client-certificate": str(client.cert), "client-key": str(client.key)},
            }
        ],
        "contexts": [
            {"name": f"{user}@ktrace-test", "context": {"cluster": "ktrace-test", "user": user}}
        ],
        "current-context": f"{user}@ktrace-test",
    }
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(json.dumps(config, indent=1) + "\n")
    path.chmod(0o600)
    return path
