"""ChangeCLIP backend: network, georeferenced tiled inference, job server and CLI."""

__version__ = "0.1.0"
