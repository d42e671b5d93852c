"""A real PostgreSQL server for the tests, from Debian's ``postgresql`` package.

initdb and pg_ctl refuse to run as root, and the tests do run as root: the cluster belongs to
``nobody`` (``setpriv``), lives in its own temporary directory, listens on a free port of
127.0.0.1 and on a socket in that directory, and is removed afterwards. Host connections need a
password (scram-sha-256), so the ledger's password handling is exercised too.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.support import free_port

ROOT = Path(__file__).resolve().parent.parent
USER = "asrd"
PASSWORD = "asrd-test-pg-password"


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _install() -> Path:
    """The server's bin directory, installing Debian's package the way deploy-deps does."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        subprocess.run([str(ROOT / "scripts" / "deploy-deps")], check=True)
        bin_dir = _bin_dir()
    if bin_dir is None:
        raise RuntimeError("no PostgreSQL server: install Debian's postgresql package")
    return bin_dir


@dataclass
class Server:
    bin_dir: Path
    data_dir: Path
    port: int
    options: str = ""  # the server options it was started with, for a restart
    host: str = "127.0.0.1"  # the address clients use

    def url(self, dbname: str = "postgres", password: bool = False) -> str:
        secret = f":{PASSWORD}" if password else ""
        return f"postgresql://{USER}{secret}@{self.host}:{self.port}/{dbname}"

    def halt(self) -> None:
        """Stop the server (fast: connections are closed), keeping its data."""
        self.pg_ctl("-m", "fast", "-w", "stop")

    def resume(self) -> None:
        log = str(self.data_dir.parent / "server.log")
        done = self.pg_ctl("-l", log, "-o", self.options, "-w", "-t", "60", "start")
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {done.stderr.strip()}")

    def create_database(self) -> str:
        """A fresh, empty database; its name."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(password=True), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}".encode())
        return name

    def pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _as_owner(self.bin_dir / "pg_ctl", "-D", str(self.data_dir), *args)

    def stop(self) -> None:
        self.pg_ctl("-m", "immediate", "stop")
        shutil.rmtree(self.data_dir.parent, ignore_errors=True)


def _as_owner(program: Path, *args: str) -> subprocess.CompletedProcess[str]:
    owner = pwd.getpwnam("nobody")
    command = [str(program), *args]
    if os.geteuid() == 0:
        command = [
            "setpriv", f"--reuid={owner.pw_uid}", f"--regid={owner.pw_gid}", "--clear-groups",
            *command,
        ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, check=False)


def start(host: str = "127.0.0.1") -> Server:
    """A new cluster listening on 127.0.0.1 and, if given, ``host`` (which its URLs then name),
    with password access from that address too."""
    bin_dir = _install()
    top = Path(tempfile.mkdtemp(prefix="asrd-pg-"))
    data = top / "data"
    pwfile = top / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if os.geteuid() == 0:
        owner = pwd.getpwnam("nobody")
        for path in (top, pwfile):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    done = _as_owner(
        bin_dir / "initdb", "-D", str(data), "-U", USER, f"--pwfile={pwfile}",
        "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8",
    )  # fmt: skip
    if done.returncode != 0:
        shutil.rmtree(top, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {done.stderr.strip()}")
    port = free_port()
    listen = "127.0.0.1" if host == "127.0.0.1" else f"127.0.0.1,{host}"
    if host != "127.0.0.1":
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write("host all all samenet scram-sha-256\n")  # the network of `host`
    # fsync off: a test cluster is thrown away; it keeps the tests' commits cheap.
    options = f"-p {port} -k {top} -c listen_addresses={listen} -c fsync=off -c max_connections=200"
    server = Server(bin_dir, data, port, options, host)
    done = server.pg_ctl("-l", str(top / "server.log"), "-o", options, "-w", "-t", "60", "start")
    if done.returncode != 0:
        log = (top / "server.log").read_text(errors="replace")[-2000:]
        shutil.rmtree(top, ignore_errors=True)
        raise RuntimeError(f"pg_ctl start failed: {done.stderr.strip()}\n{log}")
    return server


def ledger_config(server: Server) -> dict[str, str]:
    """``write_config`` keywords for a fresh database of ``server`` as the daemon's ledger."""
    return {"ledger_url": server.url(server.create_database()), "ledger_password": PASSWORD}
