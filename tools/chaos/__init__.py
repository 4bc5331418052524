"""The chaos suite: the app through the local runner under Graph, storage and process faults (`make chaos`)."""
