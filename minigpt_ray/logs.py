"""The package's logger, `logging.getLogger("minigpt_ray")`, configured once per process: by the `minigpt` command
in the driver, and by the worker loop in each Ray Train worker (whose stderr Ray forwards to the job's log)."""

from __future__ import annotations

import logging
import sys

LOGGER_NAME = "minigpt_ray"
FORMAT = "[minigpt_ray %(asctime)s] %(message)s"


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (pytest and notebooks swap it after start-up)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_logging(level: int = logging.INFO) -> logging.Logger:
    """One handler on stderr for the package's logger (idempotent); it does not propagate to Ray's root handlers,
    so every line appears once."""
    logger = get_logger()
    if not any(getattr(h, "_minigpt_ray", False) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
        handler._minigpt_ray = True  # marks our handler, so a second call adds none
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger
