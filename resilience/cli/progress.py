"""A live progress bar on a terminal; silence under cron (no TTY) or with --json."""

from __future__ import annotations

import sys
import threading

from .context import app


class _Bar:
    def __init__(self, prog, label: str):
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TransferSpeedColumn,
        )

        self.prog = prog
        self.ui = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                           TransferSpeedColumn(), TextColumn("{task.fields[files]}"), TimeElapsedColumn(),
                           transient=True)
        self.task = self.ui.add_task(label, total=None, files="")
        self.stop = threading.Event()
        self.ui.start()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.wait(0.2):
            p = self.prog
            self.ui.update(self.task, total=p.bytes_total or None, completed=p.bytes_done,
                           description=p.phase, files=f"{p.files_done}/{p.files_total} files")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(1)
        self.ui.stop()


def progress_factory(label: str):
    """A callable that starts a progress bar for an engine Progress object, or None when
    output is not a terminal (cron), --json is on, or -q style silence applies."""
    if app().json or not sys.stderr.isatty():
        return None
    return lambda prog: _Bar(prog, label)
