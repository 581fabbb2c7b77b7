"""The Recur sandbox: a stateful in-memory simulator of the Customers API, with fault injection.

`create_app()` builds the ASGI app, `start_in_thread()` serves it in-process, and
`SandboxControl` drives its `/_sandbox` control endpoints over HTTP.
"""

from sync_worker.sandbox.app import DEFAULT_SECRET_KEY, create_app
from sync_worker.sandbox.control import SandboxControl
from sync_worker.sandbox.server import RunningServer, start_in_thread

__all__ = [
    "DEFAULT_SECRET_KEY",
    "RunningServer",
    "SandboxControl",
    "create_app",
    "start_in_thread",
]
