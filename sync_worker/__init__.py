"""recur-sync: sync merchant user updates to the Recur billing API."""

__version__ = "0.1.0"
