"""The platform under everything: settings parsed once, every error type, logging with masking and
request context, and the storage clients. Imports nothing else from the app.
"""
