"""Run a command as a freshly created ordinary user (tests of the grader without root).

The project's Python may live where an ordinary user cannot reach it (here: under /root, mode
0700). Rather than change the machine, the command runs in a private mount namespace in which
each closed folder above a needed path is covered by an empty tmpfs and the needed paths are
bound back in: the user sees exactly what an instructor with their own install would see.
"""

from __future__ import annotations

import os
import pwd
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def create_user() -> pwd.struct_passwd:
    name = f"qkv{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
    return pwd.getpwnam(name)


def delete_user(user: pwd.struct_passwd) -> None:
    subprocess.run(["userdel", user.pw_name], check=False, capture_output=True)


def _closed_ancestors(path: Path) -> list[Path]:
    """Ancestors of ``path`` that others may not traverse, outermost first."""
    closed = []
    for parent in reversed(path.parents):
        if parent != Path("/") and not os.stat(parent).st_mode & 0o001:
            closed.append(parent)
    return closed


def run_as(user: pwd.struct_passwd, argv: list[str], *, home: Path, env: dict[str, str] | None = None,
           cwd: Path | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run ``argv`` as ``user`` (no capabilities, no supplementary groups), with the project's
    Python, venv and checkout reachable."""
    needed = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), REPO, Path(home).resolve()}
    hold = Path("/tmp") / f"qkv-hold-{uuid.uuid4().hex[:8]}"
    lines = ["set -e", f"mkdir -p {hold}", f"chmod 755 {hold}"]
    covered: list[Path] = []
    rebinds: list[tuple[Path, Path]] = []
    for i, path in enumerate(sorted(needed)):
        closed = _closed_ancestors(path)
        if not closed:
            continue
        lines += [f"mkdir -p {hold}/{i}", f"mount --bind {shlex.quote(str(path))} {hold}/{i}"]
        rebinds.append((Path(f"{hold}/{i}"), path))
        covered.append(closed[0])  # the outermost: what lies below it is made again
    covered = [c for c in set(covered) if not any(o in c.parents for o in covered)]
    for folder in covered:
        lines.append(f"mount -t tmpfs -o mode=0755 qkv-cover {shlex.quote(str(folder))}")
    for held, path in rebinds:
        lines += [f"mkdir -p {shlex.quote(str(path))}", f"mount --bind {held} {shlex.quote(str(path))}"]
    environment = {"PATH": f"{Path(sys.prefix) / 'bin'}:/usr/local/bin:/usr/bin:/bin", "HOME": str(home),
                   "LANG": "C.UTF-8", **(env or {})}
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in environment.items())
    lines.append(f"cd {shlex.quote(str(cwd or home))}")
    lines.append(f"exec setpriv --reuid={user.pw_uid} --regid={user.pw_gid} --clear-groups "
                 f"env -i {exports} {' '.join(shlex.quote(a) for a in argv)}")
    try:
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", "\n".join(lines)],
                              capture_output=True, text=True, timeout=timeout)
    finally:
        subprocess.run(["rm", "-rf", str(hold)], check=False)


def give(user: pwd.struct_passwd, *paths: Path) -> None:
    """Make ``paths`` (recursively) the user's own."""
    for path in paths:
        subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(path)], check=True)
