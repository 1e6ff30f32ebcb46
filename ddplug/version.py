"""The installed version of ddplug, recorded in every synthetic set's metadata."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ddplug")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
