"""The reset core: contract v1, the Graph gateway (SDK adapter and in-memory stub), safety rules,
the reset service, status records and claims, pacing, the queue worker, results and callbacks.
"""
