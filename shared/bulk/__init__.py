"""Bulk resets from CSV files: the reader and its checks, one-reset-per-guest repeats, resumable
enqueueing, the scheduled blob job, outcome lookups and reports, and spreadsheet-safe cells.
"""
