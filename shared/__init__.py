"""Guest Redemption Reset: the domain code the triggers call. Plain Python, no ``azure.functions``.

Four packages, imports pointing down only: ``api`` and ``bulk`` (callers' ways in) use ``reset``
(the reset itself), which uses ``platform`` (settings, errors, logs, storage clients).
"""
