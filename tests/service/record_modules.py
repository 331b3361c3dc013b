"""Run the mnistops CLI; when the process exits, write the names of all imported modules to a file.

Usage: ``python record_modules.py OUT_FILE <mnistops arguments>`` (e.g. ``... out.txt serve``).
The command runs exactly as ``python -m mnistops`` would. The list is written at exit: by an
``atexit`` hook after a normal return, and by a SIGTERM/SIGINT handler for servers that end by
re-raising the signal (uvicorn restores the handlers it found, i.e. this one, after its graceful
shutdown and raises the signal again); the handler then re-raises it with the default action, so
the exit status stays what it would have been.
"""

from __future__ import annotations

import atexit
import signal
import sys
from pathlib import Path
from types import FrameType


def _dump(out: Path) -> None:
    out.write_text("\n".join(sorted(sys.modules)) + "\n")


def _on_signal(out: Path) -> signal.Handlers | object:
    def handler(signum: int, _frame: FrameType | None) -> None:
        _dump(out)
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)

    return handler


if __name__ == "__main__":
    target = Path(sys.argv[1])
    atexit.register(_dump, target)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_signal(target))  # type: ignore[arg-type]
    sys.argv = ["mnistops", *sys.argv[2:]]
    from mnistops.cli import main

    main()
