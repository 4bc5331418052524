"""The platform under everything: settings parsed once, every error type, logging with masking and
request context, the storage clients and their in-memory doubles. Imports nothing else from the app.
"""
