"""Start the course hub on this machine: ``make hub`` (or run this file as root).

    .venv/bin/python hub/start.py --instructor teacher --learners ada,ben [--port 8000]

1. checks what the hub needs: root, configurable-http-proxy (``make hub-deps``), the accounts,
   and a checkout every account can read (learners' kernels import ``qkv`` from it);
2. makes nbgrader's exchange (``STATE/exchange``, writable by all, sticky) and the instructor's
   course (``~instructor/qkv-course`` by default, owned by the instructor);
3. as the instructor, copies each assignment's reference into the course's ``source/``, runs
   ``nbgrader generate_assignment`` and ``nbgrader release_assignment``: the exercises are in the
   exchange, ready for learners' Assignments tab;
4. replaces itself with JupyterHub (``hub/jupyterhub_config.py``); stop it with Ctrl-C or
   SIGTERM, which also stops every learner's server and the proxy.
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import shutil
import stat
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from qkv_hub import HUB_DIR, PROXY, REPO, RUNTIME, SETTINGS_ENV, VENV, HubSettings, user_environment  # noqa: E402


class HubSetupError(RuntimeError):
    """The hub cannot start; the message says what to do."""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = prepare(args)
    except HubSetupError as exc:
        print(f"cannot start the hub: {exc}", file=sys.stderr)
        return 2
    if args.prepare_only:
        print(f"prepared: {settings.save()}")
        return 0
    env = {**os.environ, SETTINGS_ENV: str(settings.save())}
    print(f"qkv hub: http://{settings.ip}:{settings.port}/ (instructor: {settings.instructor}; course: "
          f"{settings.course}; exchange: {settings.exchange})", flush=True)
    os.chdir(settings.state)
    jupyterhub = VENV / "bin" / "jupyterhub"
    os.execve(jupyterhub, [str(jupyterhub), "-f", str(HUB_DIR / "jupyterhub_config.py")], env)
    return 0  # not reached


def prepare(args: argparse.Namespace) -> HubSettings:
    """Everything but starting JupyterHub; idempotent, so a restart keeps the course as it is."""
    if os.geteuid() != 0:
        raise HubSetupError("run as root: JupyterHub starts each account's server as that account")
    if not PROXY.exists():
        raise HubSetupError(f"configurable-http-proxy is not installed in {PROXY.parent}: run `make hub-deps`")
    if args.authenticator == "test-dummy" and args.ip != "127.0.0.1":
        raise HubSetupError("the test-dummy authenticator accepts any password: loopback (127.0.0.1) only")
    instructor = _account(args.instructor)
    learners = [name for name in (args.learners or "").split(",") if name]
    for name in learners:
        _account(name)
    if args.learner_group:
        try:
            grp.getgrnam(args.learner_group)
        except KeyError:
            raise HubSetupError(f"no group {args.learner_group!r}: groupadd it and add the learners") from None
    _check_readable_by_everyone(REPO, VENV)
    bin_dir = ensure_runtime()

    state = Path(args.state).resolve()
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o755)
    settings = HubSettings(state=str(state), course=str(Path(args.course or Path(instructor.pw_dir) / "qkv-course")),
                           instructor=instructor.pw_name, learners=learners, learner_group=args.learner_group,
                           ip=args.ip, port=args.port, hub_port=args.hub_port, proxy_api_port=args.proxy_api_port,
                           authenticator=args.authenticator, bin=str(bin_dir),
                           library_path=_runtime_env()["LD_LIBRARY_PATH"] if RUNTIME in bin_dir.parents else "")
    for name in [instructor.pw_name, *learners, *_group_members(args.learner_group)]:
        _private_home(_account(name))
    settings.exchange.mkdir(exist_ok=True)
    settings.exchange.chmod(0o777 | stat.S_ISVTX)  # everyone submits; nobody removes another's files
    course = Path(settings.course)
    course.mkdir(parents=True, exist_ok=True)
    os.chown(course, instructor.pw_uid, instructor.pw_gid)
    course.chmod(0o700)  # the gradebook and every submission: the instructor's eyes only
    # The promise learners rely on: their kernels can import the course library.
    run_as(settings, instructor, [str(bin_dir / "python"), "-c", "import qkv, nbgrader, torch"], cwd=course)
    for assignment in args.assignments or _all_assignments():
        release(settings, instructor, assignment)
    return settings


def ensure_runtime() -> Path:
    """The bin folder whose python every account can run, with the course's packages.

    JupyterHub's servers must run from an environment its users can read and execute. A venv
    made from an interpreter under a private folder (pyenv under /root, say) cannot be run by
    learners; then build ``hub/.runtime``: a copy of that same interpreter (without its
    site-packages) in the checkout, and a venv on it whose site-packages adds the course
    venv's, with the course venv's console scripts re-pointed at it. The same interpreter, not
    the system's Python of the same minor version: pure-Python packages can depend on a
    patch release (soupsieve 4.1 fails to parse CSS selectors on Debian's 3.11.2, which breaks
    formgrader's pages).
    """
    venv_python = (VENV / "bin" / "python").resolve()
    if _runnable_by_everyone(venv_python):
        return VENV / "bin"
    base_prefix, version = subprocess.run(
        [str(VENV / "bin" / "python"), "-c",
         "import sys; print(sys.base_prefix); print('%d.%d' % sys.version_info[:2])"],
        capture_output=True, text=True, check=True).stdout.split()
    interpreter = RUNTIME / "python"
    stamp = RUNTIME / ".copied-from"
    if not (stamp.exists() and stamp.read_text() == str(venv_python)):
        shutil.rmtree(RUNTIME, ignore_errors=True)
        stdlib = Path(base_prefix) / "lib" / f"python{version}"
        shutil.copytree(base_prefix, interpreter, symlinks=True, ignore=lambda folder, names: [
            n for n in names if Path(folder) == stdlib and n in ("site-packages", "test")])
        (interpreter / "lib" / f"python{version}" / "site-packages").mkdir(exist_ok=True)
        subprocess.run([str(interpreter / "bin" / f"python{version}"), "-m", "venv", "--without-pip",
                        str(RUNTIME / "venv")], check=True, env=_runtime_env())
        stamp.write_text(str(venv_python))
    venv = RUNTIME / "venv"
    site = venv / "lib" / f"python{version}" / "site-packages"
    venv_site = VENV / "lib" / f"python{version}" / "site-packages"
    # addsitedir, not a bare path: it also runs the course venv's .pth files (the editable install of qkv).
    (site / "qkv-course-venv.pth").write_text(f"import site; site.addsitedir({str(venv_site)!r})\n")
    # Jupyter finds extensions, JupyterLab's assets and kernels under sys.prefix: share the venv's.
    for sub in ("etc/jupyter", "share/jupyter"):
        link = venv / sub
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            shutil.rmtree(link, ignore_errors=True)
            link.symlink_to(VENV / sub, target_is_directory=True)
    runtime_python = venv / "bin" / "python"
    for script in (VENV / "bin").iterdir():
        if script.is_file() and not script.name.startswith(("python", "activate", "pip")):
            head, _, body = script.read_bytes().partition(b"\n")
            if head.startswith(b"#!") and head[2:].strip() == str(VENV / "bin" / "python").encode():
                target = venv / "bin" / script.name
                target.write_bytes(b"#!" + str(runtime_python).encode() + b"\n" + body)
                target.chmod(0o755)
    for path in [RUNTIME, *RUNTIME.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | stat.S_IROTH | (stat.S_IXOTH if path.stat().st_mode & stat.S_IXUSR else 0))
    return venv / "bin"


def _runtime_env() -> dict[str, str]:
    # The copied interpreter links libpython through a RUNPATH into the private folder it came
    # from; LD_LIBRARY_PATH takes precedence over RUNPATH, so the copy's own libpython loads.
    return {**os.environ, "LD_LIBRARY_PATH": str(RUNTIME / "python" / "lib")}


def _runnable_by_everyone(path: Path) -> bool:
    folders_ok = all(p.stat().st_mode & stat.S_IXOTH for p in path.parents)
    return folders_ok and bool(path.stat().st_mode & stat.S_IXOTH)


def release(settings: HubSettings, instructor: pwd.struct_passwd, assignment: str) -> None:
    """Put ``assignment`` in the exchange, from qkv's reference, as the instructor would by hand."""
    reference = REPO / "solutions" / assignment
    if not (reference / f"{assignment}.ipynb").is_file():
        raise HubSetupError(f"no assignment {assignment!r} in {REPO / 'solutions'}")
    source = Path(settings.course) / "source" / assignment
    if not source.exists():
        shutil.copytree(reference, source, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
        for path in [source.parent, source, *source.rglob("*")]:
            os.chown(path, instructor.pw_uid, instructor.pw_gid)
    for command in (["generate_assignment", assignment, "--force"], ["release_assignment", assignment, "--force"]):
        run_as(settings, instructor, [str(Path(settings.bin) / "nbgrader"), *command], cwd=Path(settings.course))


def run_as(settings: HubSettings, account: pwd.struct_passwd, command: list[str], cwd: Path,
           check: bool = True) -> subprocess.CompletedProcess:
    """Run ``command`` as ``account`` with the environment its hub server would give it."""
    env = {**user_environment(settings, account.pw_name), "HOME": account.pw_dir, "USER": account.pw_name,
           "LOGNAME": account.pw_name, "LANG": "C.UTF-8"}
    proc = subprocess.run(command, cwd=cwd, env=env, user=account.pw_uid, group=account.pw_gid,
                          extra_groups=os.getgrouplist(account.pw_name, account.pw_gid),
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise HubSetupError(f"`{' '.join(command)}` as {account.pw_name} failed:\n"
                            f"{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
    return proc


def _account(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise HubSetupError(f"no local account {name!r}: "
                            f"create it with `useradd -m {name}` and `passwd {name}`") from None


def _group_members(group: str | None) -> list[str]:
    if not group:
        return []
    entry = grp.getgrnam(group)
    return sorted({*entry.gr_mem, *(p.pw_name for p in pwd.getpwall() if p.pw_gid == entry.gr_gid)})


def _private_home(account: pwd.struct_passwd) -> None:
    """Learners fetch their feedback into their home folder, and the instructor's holds the course
    (every learner's grades): no home may be readable by the others (Debian's useradd makes
    homes 0755 unless HOME_MODE says otherwise)."""
    home = Path(account.pw_dir)
    if home.is_dir() and home.stat().st_uid == account.pw_uid and home.stat().st_mode & 0o077:
        home.chmod(0o700)
        print(f"made {home} private (0700): other learners could read the feedback fetched into it", flush=True)


def _check_readable_by_everyone(*paths: Path) -> None:
    """Learners' servers run as the learners, from this checkout's venv: each folder on the way
    must be searchable by others, and the checkout and venv readable."""
    for path in paths:
        for folder in [*reversed(path.parents), path]:
            mode = folder.stat().st_mode
            need = stat.S_IXOTH | (stat.S_IROTH if folder in paths else 0)
            if mode & need != need:
                raise HubSetupError(
                    f"{folder} is not {'readable' if folder in paths else 'searchable'} by other accounts, so "
                    f"learners' servers cannot run the course's Python or import qkv: `chmod o+rx {folder}` "
                    "(or put the checkout somewhere readable, such as /opt/qkv)")


def _all_assignments() -> list[str]:
    return sorted(p.parent.name for p in (REPO / "solutions").glob("*/*.ipynb") if p.stem == p.parent.name)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--instructor", required=True, help="local account of the instructor (runs formgrader)")
    p.add_argument("--learners", help="comma-separated local accounts allowed to log in")
    p.add_argument("--learner-group", help="or: every member of this local group may log in")
    p.add_argument("--state", default="/srv/qkv-hub", help="JupyterHub's state and nbgrader's exchange "
                   "(default /srv/qkv-hub)")
    p.add_argument("--course", help="the instructor's nbgrader course folder (default ~INSTRUCTOR/qkv-course)")
    p.add_argument("--assignments", nargs="*", help="assignments to release (default: all)")
    p.add_argument("--ip", default="127.0.0.1", help="address to listen on (default loopback; "
                   "put HTTPS in front before opening it to a network)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--hub-port", type=int, default=8081)
    p.add_argument("--proxy-api-port", type=int, default=8001)
    p.add_argument("--authenticator", choices=["pam", "test-dummy"], default="pam",
                   help="pam: the machine's accounts and passwords (default). test-dummy: loopback tests only")
    p.add_argument("--prepare-only", action="store_true", help="prepare the exchange and course, do not start")
    return p


if __name__ == "__main__":
    sys.exit(main())
