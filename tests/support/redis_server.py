"""A real ``redis-server`` on a free port, which tests may stop and restart."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _command(port: int, *args: str, timeout_s: float = 1.0) -> bytes:
    """Send one inline command and return the first reply line."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall((" ".join(args) + "\r\n").encode())
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
        return reply.strip()


class RedisServer:
    """Runs ``redis-server`` without persistence in ``workdir`` on a fixed free port."""

    def __init__(self, workdir: Path, *, binary: str = "redis-server") -> None:
        path = shutil.which(binary)
        if path is None:
            raise RuntimeError(
                f"{binary} not found on PATH; install it (apt-get install redis-server) "
                "or run the suite through scripts/test.sh, which does"
            )
        self.binary = path
        self.workdir = workdir
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, *extra: str, timeout_s: float = 10.0) -> None:
        if self.running:
            return
        self._process = subprocess.Popen(
            [
                self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
                "--logfile", str(self.workdir / "redis.log"), *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if _command(self.port, "PING") == b"+PONG":
                    return
            except OSError:
                pass
            if self._process.poll() is not None:
                log = (self.workdir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited with {self._process.returncode}: {log}")
            if time.monotonic() >= deadline:
                raise RuntimeError(f"redis-server did not answer PING within {timeout_s}s")
            time.sleep(0.02)

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def restart(self, *extra: str) -> None:
        self.stop()
        self.start(*extra)

    def command(self, *args: str) -> bytes:
        """Run one inline command (for resetting state without a client library)."""
        return _command(self.port, *args)
