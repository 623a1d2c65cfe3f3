"""A ``stem-observe`` command run as a user runs it: a subprocess whose output is read."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from tests.support.wait import wait_for


def ready(base: str) -> bool:
    """Whether the ``serve`` at ``base`` answers ``/readyz`` with 200 (a 503 until its first
    poll of Redis, or no answer yet, is not ready: wait on it)."""
    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):  # HTTPError (503) is a URLError
        return False


class Running:
    """``python -m stem_observe ARGS`` with stdout collected line by line and stderr kept in
    ``workdir``. Stopping sends ``stop_signal`` and kills after ``timeout_s``."""

    def __init__(self, args: list[str], workdir: Path, *, env: dict[str, str] | None = None,
                 stop_signal: int = signal.SIGTERM, name: str = "stem-observe") -> None:
        self.stderr_path = workdir / f"{name}.stderr"
        self._stderr = self.stderr_path.open("w")
        self.stop_signal = stop_signal
        self.process = subprocess.Popen(
            [sys.executable, "-m", "stem_observe", *args],
            stdout=subprocess.PIPE, stderr=self._stderr, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(
            target=lambda: self.lines.extend(self.process.stdout or []), daemon=True)
        self._reader.start()

    def wait_line(self, pattern: str, *, timeout_s: float = 30.0) -> re.Match[str]:
        """The first output line matching ``pattern`` (waits for it)."""
        compiled = re.compile(pattern)
        return wait_for(
            lambda: next((m for m in map(compiled.search, list(self.lines)) if m), None),
            timeout_s=timeout_s, message=f"a line matching {pattern!r}")

    def base_url(self) -> str:
        """The HTTP address the command printed (``http://host:port``)."""
        return self.wait_line(r"(http://\S+?)/metrics").group(1)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(self.stop_signal)
        try:
            self.process.wait(timeout=timeout_s)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self._reader.join(timeout=5)
            if self.process.stdout is not None:
                self.process.stdout.close()
            self._stderr.close()
        return self.process.returncode

    def __enter__(self) -> Running:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
