"""The exit statuses of every command of ``python -m pdfnet_core`` (also in --help and the README)."""
from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    OK = 0             # every input was written or was already done
    SOME_FAILED = 1    # some inputs failed (each is listed at the end); the others were written
    USAGE = 2          # usage, set-up or model error: nothing was processed
    CRASH = 3          # unexpected internal error (a bug): a traceback is printed
    INTERRUPTED = 130  # Ctrl-C, as a shell reports a SIGINT


HELP = """exit status:
  0  every input was written or was already done
  1  some inputs failed (each is listed at the end); the others were written
  2  usage, set-up or model error: nothing was processed (bad option, --out not writable,
     unreadable --background-image, missing or wrong weights)
  3  unexpected internal error (a bug): a traceback is printed"""
