"""The debug image, on its own: the command line shows the default in its help without loading
the cluster client."""

DEFAULT_IMAGE = "nicolaka/netshoot:v0.13"
