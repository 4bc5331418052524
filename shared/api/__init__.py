"""The HTTP API: handlers, body models and the OpenAPI document, intake (validate, record, enqueue),
the caller's principal, and poison triage. Builds on the reset core; nothing below imports it.
"""
