"""Finding a Redis for `cmsbot demo`: REDIS_URL if it answers, else a private
`redis-server` on a free port, else a clear explanation."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time

import redis

NO_REDIS = (
    "cmsbot needs Redis. REDIS_URL ({url}) did not answer and no `redis-server` binary is on PATH to start a "
    "private one. Either start Redis (Debian/Ubuntu: `sudo apt-get install redis-server`; macOS: `brew install "
    "redis`; Docker: `docker run -p 6379:6379 redis:7`) and point REDIS_URL at it, or install redis-server so the "
    "demo can start its own."
)


def answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2).ping())
    except (redis.RedisError, OSError):
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """A throwaway redis-server on loopback, removed when stopped."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server")
        self.port = free_port()
        self.dir = tempfile.TemporaryDirectory(prefix="cmsbot-redis-")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir.name],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"
        deadline = time.monotonic() + 10
        while not answers(self.url):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the private redis-server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.dir.cleanup()
