"""swapstation: the controller companion of an EV battery-swap station."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("swapstation")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
