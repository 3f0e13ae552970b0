"""Looking at processes from a test: is one still running."""

import os
from pathlib import Path


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for PID 1, which may not reap in a container)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def listening_sockets(marker: str) -> list[tuple[str, str, int]]:
    """(command line, local address in /proc/net's hex, port) of every TCP socket in LISTEN state held by a process
    whose command line contains ``marker`` (from /proc/<pid>/fd and /proc/net/tcp and tcp6)."""
    owners = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if marker not in command:
                continue
            for fd in (entry / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    owners[target[len("socket:[") : -1]] = command
        except OSError:  # a process that ended meanwhile
            continue
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port = fields[1].split(":")
            if fields[3] == "0A" and fields[9] in owners:
                found.append((owners[fields[9]], address, int(port, 16)))
    return found
