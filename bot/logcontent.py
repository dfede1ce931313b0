"""Keep customer content out of the logs, at every level.

Libraries log what passes through them once the root logger is at DEBUG (``bot -v``):
websockets every frame (resume tokens, messages), SQLAlchemy every statement's parameters
and result rows, aiosqlite every call with its arguments. Unless ``privacy.log_content`` is
on (debugging on test data only), ``keep_content_out_of_logs`` raises those loggers above
the levels that carry content; the store's engine hides SQL parameters in its errors too
(``hide_parameters``, bot/store/engine.py). The bot's own log lines name conversations,
codes and counts, never message text or tokens.
"""

from __future__ import annotations

import logging

# Logger -> the lowest level that carries no content.
CONTENT_LOGGERS = {
    "websockets": logging.INFO,  # DEBUG: "< TEXT '{"type":"hello",...,"resume":...}'"
    "sqlalchemy.engine": logging.WARNING,  # INFO: parameters; DEBUG: result rows
    "aiosqlite": logging.INFO,  # DEBUG: "executing functools.partial(..., (params))"
}


def keep_content_out_of_logs(log_content: bool) -> None:
    """Raise the content-carrying loggers (idempotent); ``log_content`` leaves them be."""
    if log_content:
        return
    for name, floor in CONTENT_LOGGERS.items():
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < floor:
            logger.setLevel(floor)
