"""A throwaway PostgreSQL cluster started from the installed binaries, on a free port, with its data under the test's
temp dir: never the machine's own server on 5432.

As root, initdb and the postmaster refuse to run, so they run as the `postgres` user (the Debian package creates it)
through runuser. That user must reach the data directory, but every pytest session run by root resets its
`/tmp/pytest-of-root` to 0700 (concurrent sessions share it), so as root the cluster lives in its own directory under
/tmp, linked from the test's temp dir and removed by `destroy()`.

Password auth (SCRAM) over TCP only: no Unix socket, whose path would be too long under pytest's temp dir. `stop()`
and `start()` take it down mid-test and bring it back on the same port with the same data.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from tests.support.ports import free_port

SUPERUSER = "postgres"


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql (./dev test does)")


def _as_owner(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@dataclass
class Postgres:
    bin_dir: Path
    data_dir: Path
    port: int
    password: str

    def url(self, database: str = "postgres", user: str = SUPERUSER, password: str | None = None) -> str:
        secret = self.password if password is None else password
        return f"postgresql://{user}:{quote(secret, safe='')}@127.0.0.1:{self.port}/{database}"

    def _ctl(self, *args: str) -> None:
        log = self.data_dir.parent / "postgres.log"
        subprocess.run(
            _as_owner(
                [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(log), "-w", "-t", "60", *args]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories= -c fsync=off"
        self._ctl("-o", options, "start")

    def stop(self) -> None:
        self._ctl("-m", "fast", "stop")

    def destroy(self) -> None:
        """Stop the server if it runs, and remove its files."""
        if (self.data_dir / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.data_dir.parent, ignore_errors=True)

    def create_database(self, name: str) -> str:
        """A fresh database `name` (dropped first if a previous run left it); returns its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def execute(self, sql: str, database: str = "postgres", params: tuple = ()) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as conn:
            cursor = conn.execute(sql, params or None)
            return cursor.fetchall() if cursor.description else []


def start_postgres(workdir: Path) -> Postgres:
    bin_dir = _bin_dir()
    workdir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        home = Path(tempfile.mkdtemp(prefix="ggufstack-pg-"))
        (workdir / "cluster").symlink_to(home)
        workdir = home
    data_dir = workdir / "data"
    data_dir.mkdir()
    password = secrets.token_urlsafe(16)
    pwfile = workdir / "pwfile"
    pwfile.write_text(password)
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        for path in (workdir, data_dir, pwfile):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    subprocess.run(
        _as_owner(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data_dir),
                "-U",
                SUPERUSER,
                "--pwfile",
                str(pwfile),
                "-A",
                "scram-sha-256",
                "--no-sync",
                "-E",
                "UTF8",
            ]
        ),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    pwfile.unlink()
    server = Postgres(bin_dir, data_dir, free_port(), password)
    server.start()
    return server
