"""A Kubernetes API server that serves the running lab as a cluster (see server.py)."""
