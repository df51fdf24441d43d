"""Throw-away Redis deployments for tests of config.redis: AUTH, TLS, replica and Sentinel, each on free ports.

Every server is a real ``redis-server`` (Sentinel is ``redis-server --sentinel``: Debian ships no separate binary),
with nothing on disk but its log and, for Sentinel, the config file it rewrites.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

from tests.stack import free_port, wait_until

MASTER = "mymaster"
BINARY = shutil.which("redis-server")
OPENSSL = shutil.which("openssl")


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Server:
    """One ``redis-server`` on a free port with extra arguments (``--requirepass``, ``--tls-port`` …)."""

    def __init__(self, logdir: Path, *args: str, config: str | None = None, tls: bool = False) -> None:
        self.port = free_port()
        self.logdir = logdir
        self.args = list(args)
        self.config = config  # a config file's text (Sentinel); written next to the log
        self.tls = tls
        self.proc: subprocess.Popen | None = None

    def start(self) -> Server:
        assert BINARY is not None, "redis-server is not installed"
        self.logdir.mkdir(parents=True, exist_ok=True)
        argv = [BINARY]
        if self.config is not None:
            conf = self.logdir / f"redis-{self.port}.conf"
            conf.write_text(f"port {self.port}\nbind 127.0.0.1\n" + self.config)
            argv.append(str(conf))
        port = ["--port", "0", "--tls-port", str(self.port)] if self.tls else ["--port", str(self.port)]
        argv += port + ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *self.args]
        log = (self.logdir / f"redis-{self.port}.log").open("ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: self.proc.poll() is not None or _accepts(self.port), 10, what=f"redis on {self.port}")
        if self.proc.poll() is not None:
            raise RuntimeError(f"redis-server {' '.join(argv[1:])} exited; see {self.logdir}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def sentinel(logdir: Path, master_port: int, down_after_ms: int = 1000, auth_pass: str | None = None) -> Server:
    """A sentinel watching ``MASTER`` at ``master_port`` with quorum 1 (enough alone to fail over)."""
    auth = f"sentinel auth-pass {MASTER} {auth_pass}\n" if auth_pass else ""
    return Server(
        logdir,
        "--sentinel",
        config=(
            f"sentinel monitor {MASTER} 127.0.0.1 {master_port} 1\n"
            f"sentinel down-after-milliseconds {MASTER} {down_after_ms}\n"
            f"sentinel failover-timeout {MASTER} 5000\n" + auth
        ),
    )


def tls_files(folder: Path) -> dict[str, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1/localhost signed by it (openssl)."""
    assert OPENSSL is not None, "openssl is not installed"
    folder.mkdir(parents=True, exist_ok=True)
    files = {name: folder / name for name in ("ca.crt", "ca.key", "server.crt", "server.key", "server.csr")}
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for argv in (
        [
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=asr-test-ca",
            "-keyout",
            files["ca.key"],
            "-out",
            files["ca.crt"],
        ],
        [
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            files["server.key"],
            "-out",
            files["server.csr"],
        ],
        [
            "x509",
            "-req",
            "-in",
            files["server.csr"],
            "-CA",
            files["ca.crt"],
            "-CAkey",
            files["ca.key"],
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            folder / "san.ext",
            "-out",
            files["server.crt"],
        ],
    ):
        subprocess.run([OPENSSL, *map(str, argv)], check=True, capture_output=True)
    return files


def tls_server(logdir: Path, files: dict[str, Path], *args: str) -> Server:
    """A TLS-only Redis (no plain port) with the certificate of :func:`tls_files`; clients need no certificate."""
    return Server(
        logdir,
        "--tls-cert-file",
        str(files["server.crt"]),
        "--tls-key-file",
        str(files["server.key"]),
        "--tls-ca-cert-file",
        str(files["ca.crt"]),
        "--tls-auth-clients",
        "no",
        *args,
        tls=True,
    )
