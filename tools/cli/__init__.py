"""guest-reset, the admins' command line (bulk submit, status, report, poison triage, single resets).

Never deployed (.funcignore drops tools/); ``pip install -e .`` installs it as the ``guest-reset`` script.
"""
