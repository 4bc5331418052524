"""Local runner for function_app.py: queue/HTTP/admin hosting against Azurite (`python -m tools.devhost`).

The Azure Functions host cannot run here, so this small stand-in loads the app the way the Python
worker does and drives it with the Storage Queues extension's semantics (batching, retries,
`<queue>-poison`, messageEncoding, host.json and AzureFunctionsJobHost__* overrides).
Not implemented on purpose: function-key checks (as with Core Tools), timer scheduling (use
`POST /admin/functions/<name>`), bindings other than queue output, dynamic concurrency.
"""

from tools.devhost.host import DevHost, serve
from tools.devhost.launcher import DevHostError, DevHostProcess, running_devhost

__all__ = ["DevHost", "DevHostError", "DevHostProcess", "running_devhost", "serve"]
