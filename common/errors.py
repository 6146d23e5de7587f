"""The base class of errors that describe bad input or a bad environment, not a bug.

The ``brushtrain`` command prints such an error as one message, without a
traceback, and exits with its ``exit_code``: 2 for settings and arguments, 1 for
a run that cannot go on (a full disk, unreadable data). Errors raised the same
way on every rank of a distributed run set ``rank_zero_only`` so the message
appears once.
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    exit_code = 2
    prefix = ""  # printed before the message, e.g. "config error: "
    rank_zero_only = False
    reported = False  # already printed where it happened (before the other processes could end this one)
