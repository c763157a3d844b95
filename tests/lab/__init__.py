"""The lab: a two-node Kubernetes-style cluster network built from Linux network namespaces."""
