"""kapacitor-oncall bridge: Kapacitor alert events in, on-call platform requests out."""

from importlib import metadata

try:
    __version__ = metadata.version("kapacitor-oncall")
except metadata.PackageNotFoundError:  # pragma: no cover - run from a tree that was never installed
    __version__ = "0+unknown"
