"""Guest Redemption Reset: the domain code shared by the triggers, the CLI, the local runner and the tests.

Plain Python: nothing here imports ``azure.functions``.
"""
