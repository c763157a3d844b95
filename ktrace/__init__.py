"""ktrace: packet-capture troubleshooting for Kubernetes networking incidents."""

__version__ = "0.1.0"
