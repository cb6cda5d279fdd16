"""Run one untrusted command in a box, and take the whole box down when it ends.

Why this exists: a lab submission is code we did not write, run by the grader with the grader's rights.
It must not outlive its grading, change what later submissions are graded with, write outside its own
folder, reach the network, or hold the machine's memory. The grader runs this file as a script,
``python -I sandbox.py SPEC.json`` (see :func:`run_boxed`); its ``main`` builds the box and then
``exec``s the command inside it.

Two strengths, chosen by :func:`probe` once per grader process:

``namespaces`` (Linux, as root, or where unprivileged user namespaces are allowed)
    A private PID namespace: the command is process 1 of it, so when it exits -- or when the grader kills
    the launcher on a timeout -- the kernel kills every process it started, ``setsid()`` or not. A private
    mount namespace: every mount is read-only except the run's scratch folder, and the labs folder (with
    the solutions) is hidden under an empty tmpfs. A private network namespace with only loopback. Run as
    root, the command drops to ``nobody``; otherwise it keeps no capabilities.
``rlimits`` (anything else)
    Resource limits, a fresh session and a kill of that session's process group at the end. A process
    that calls ``setsid()`` escapes the group; files are protected only by their permissions. The grader
    prints a warning when it falls back to this.

Both apply the same resource limits (address space, CPU seconds, file size, processes, open files) to
every process of the submission.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import signal
import socket
import struct
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

NOBODY = 65534

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38


@dataclass(frozen=True)
class Limits:
    """What one submission's processes may use. Each process gets these rlimits; ``processes`` counts
    every process and thread of the grading user, so it only binds when the box switches to ``nobody``."""

    memory_mb: int = 1024        # address space per process (RLIMIT_AS)
    cpu_s: int = 120             # CPU seconds per process (RLIMIT_CPU)
    file_mb: int = 64            # largest file it may write (RLIMIT_FSIZE)
    processes: int = 256         # processes and threads (RLIMIT_NPROC)
    open_files: int = 256        # descriptors per process (RLIMIT_NOFILE)


@dataclass
class Spec:
    """Everything the launcher needs, written by the grader as JSON (so the launcher reads no environment)."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    writable: list[str]                      # folders that stay writable inside the box
    hidden: list[str] = field(default_factory=list)   # folders replaced by an empty, read-only tmpfs
    reachable: list[str] = field(default_factory=list)  # paths `nobody` must be able to reach (the interpreter)
    limits: Limits = field(default_factory=Limits)
    mode: str = "namespaces"
    switch_user: bool = True                 # as root: run as `nobody`


def main(argv: list[str]) -> int:
    raw = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    raw["limits"] = Limits(**raw["limits"])
    spec = Spec(**raw)
    if spec.mode == "namespaces":
        return _run_in_namespaces(spec)
    _apply_limits(spec.limits)
    if spec.switch_user and os.geteuid() == 0:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    os.chdir(spec.cwd)
    os.execve(spec.argv[0], spec.argv, spec.env)
    return 127  # not reached


# -- the namespace box -------------------------------------------------------------------------------

def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _unshare(libc: ctypes.CDLL, as_root: bool) -> None:
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC
    if not as_root:
        uid, gid = os.getuid(), os.getgid()
        _check(libc.unshare(flags | CLONE_NEWUSER), "unshare")
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
        Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    else:
        _check(libc.unshare(flags), "unshare")


def _run_in_namespaces(spec: Spec) -> int:
    libc = _libc()
    as_root = os.geteuid() == 0
    _unshare(libc, as_root)
    pid = os.fork()  # the child is process 1 of the new PID namespace
    if pid == 0:
        try:
            _become_init(spec, libc, as_root)
        except BaseException as exc:  # tell the grader why the box could not be built
            print(f"corolab sandbox: could not start: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            os._exit(126)
    signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGKILL))
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def _become_init(spec: Spec, libc: ctypes.CDLL, as_root: bool) -> None:
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")
    mount = libc.mount
    mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    _check(mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
    # A /proc of this PID namespace: the box sees its own processes only, not other boxes' folders.
    mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)  # kept as it was if refused
    if as_root:
        _open_paths_for_nobody(spec, mount)
    for folder in spec.writable:  # a mount of its own, so the read-only pass below skips it
        _check(mount(folder.encode(), folder.encode(), None, MS_BIND | MS_REC, None), f"bind {folder}")
    for folder in spec.hidden:
        if os.path.isdir(folder):
            _check(mount(b"tmpfs", folder.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"size=4k,mode=755"),
                   f"hide {folder}")
    _make_read_only(mount, keep={os.path.realpath(w) for w in spec.writable})
    _loopback_up()
    _apply_limits(spec.limits)
    if as_root:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    else:
        _drop_capabilities(libc)
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")  # cleared by setuid: set again
    os.chdir(spec.cwd)
    os.execve(spec.argv[0], spec.argv, spec.env)


def _make_read_only(mount, keep: set[str]) -> None:  # type: ignore[no-untyped-def]
    """Remount every mount read-only, keeping its other flags (the kernel refuses to drop them)."""
    flag_of = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
               "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        parts = line.split()
        target = parts[4].encode().decode("unicode_escape")
        if target in keep:
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for option in parts[5].split(","):
            flags |= flag_of.get(option, 0)
        mount(None, target.encode(), None, flags, None)  # a mount that refuses stays as it was


def _open_paths_for_nobody(spec: Spec, mount) -> None:  # type: ignore[no-untyped-def]
    """Let ``nobody`` reach the interpreter when it lives under a private folder (``/root/.pyenv``).

    Why not chmod: that would change the real machine. Instead the private folder is covered by a tmpfs
    holding only the needed subfolder, bound back in from the original: the rest of it stays unseen.
    """
    stage = Path(spec.cwd).parent / ".stage"
    done: set[str] = set()
    for _ in range(8):
        blocked = _first_blocked(spec.reachable)
        if blocked is None:
            return
        parent, child = blocked
        if parent in done:
            raise OSError(errno.EACCES, f"{parent} stays closed to the grading user")
        done.add(parent)
        stage.mkdir(exist_ok=True)
        kept = []
        for i, name in enumerate(sorted(child)):
            holder = stage / str(len(done)) / str(i)
            holder.mkdir(parents=True)
            _check(mount(os.path.join(parent, name).encode(), str(holder).encode(), None, MS_BIND | MS_REC, None),
                   "stage")
            kept.append((name, holder))
        _check(mount(b"tmpfs", parent.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=755"), f"cover {parent}")
        for name, holder in kept:
            target = os.path.join(parent, name)
            os.mkdir(target, 0o755) if holder.is_dir() else Path(target).touch()
            _check(mount(str(holder).encode(), target.encode(), None, MS_BIND | MS_REC, None), "unstage")
    raise OSError(errno.EACCES, "could not open the interpreter's folders to the grading user")


def nobody_can_reach(paths: list[str]) -> bool:
    return _first_blocked(paths) is None


def _first_blocked(paths: list[str]) -> tuple[str, set[str]] | None:
    """The first folder ``nobody`` cannot enter on the way to some path, with the entries needed in it."""
    found: dict[str, set[str]] = {}
    for path in paths:
        parts = Path(os.path.realpath(path)).parts
        for depth in range(1, len(parts)):
            folder = os.path.join(*parts[:depth])
            st = os.stat(folder)
            if not st.st_mode & 0o001:
                found.setdefault(folder, set()).add(parts[depth])
                break
    if not found:
        return None
    first = min(found, key=len)
    return first, found[first]


def _loopback_up() -> None:
    """Bring up ``lo`` in the new network namespace: labs talk to servers on 127.0.0.1, nothing else."""
    import fcntl

    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sh14x", b"lo", 0)
        flags = struct.unpack("16sh14x", fcntl.ioctl(s, SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh14x", b"lo", flags | IFF_UP))


def _drop_capabilities(libc: ctypes.CDLL) -> None:
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()
    _check(libc.capset(header, data), "capset")


def _apply_limits(limits: Limits) -> None:
    """Set every limit this system has; one it lacks or refuses (macOS and RLIMIT_AS) is skipped."""
    import resource

    mb = 1024 * 1024
    for name, value in [("RLIMIT_AS", limits.memory_mb * mb), ("RLIMIT_CPU", limits.cpu_s),
                        ("RLIMIT_FSIZE", limits.file_mb * mb), ("RLIMIT_NPROC", limits.processes),
                        ("RLIMIT_NOFILE", limits.open_files), ("RLIMIT_CORE", 0)]:
        if hasattr(resource, name):
            try:
                resource.setrlimit(getattr(resource, name), (value, value))
            except (ValueError, OSError):
                if sys.platform == "linux":  # here every limit must hold
                    raise


# -- the grader's side -------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def probe() -> str:
    """``"namespaces"`` if a namespace box can be built here, else ``"rlimits"`` (once per process)."""
    if sys.platform != "linux" or os.environ.get("COROLAB_SANDBOX") == "rlimits":
        return "rlimits"
    import tempfile

    with tempfile.TemporaryDirectory(prefix="corolab-probe-") as tmp:
        os.chmod(tmp, 0o755)
        scratch = Path(tmp) / "scratch"
        scratch.mkdir()
        if os.geteuid() == 0:
            os.chown(scratch, NOBODY, NOBODY)
        hidden = Path(tmp) / "hidden"
        hidden.mkdir()
        (hidden / "secret").touch()
        check = "import os, sys; sys.exit(os.path.exists(sys.argv[1]))"  # every step of a real run, tried
        spec = Spec(argv=[sys.executable, "-c", check, str(hidden / "secret")],
                    env={"PATH": "/usr/bin:/bin"}, cwd=str(scratch), writable=[str(scratch)],
                    hidden=[str(hidden)], reachable=interpreter_paths())
        try:
            proc = run_boxed(spec, Path(tmp) / "spec.json", timeout=60, output=None)
        except (OSError, subprocess.SubprocessError):
            return "rlimits"
        return "namespaces" if proc == 0 else "rlimits"


def interpreter_paths() -> list[str]:
    """What the box's user must reach to run Python and import pytest and corolab."""
    import corolab

    paths = {sys.executable, os.path.realpath(sys.executable), sys.prefix, sys.base_prefix,
             str(Path(corolab.__file__).resolve().parents[1])}
    paths |= {p for p in sys.path if p and os.path.isdir(p)}
    return sorted(paths)


def run_boxed(spec: Spec, spec_path: Path, timeout: float, output: int | None,
              pass_fds: tuple[int, ...] = ()) -> int | None:
    """Run ``spec`` through the launcher; return its exit code, or ``None`` when it ran out of time.

    Output goes to the file descriptor ``output`` (a file, never a pipe: a pipe kept open by a
    leftover process would hold the grader). Whatever happens, the launcher's whole session is killed
    before this returns; in ``namespaces`` mode that takes the PID namespace, and everything in it, down.
    """
    data = asdict(spec)
    spec_path.write_text(json.dumps(data), encoding="utf-8")
    os.chmod(spec_path, 0o600)
    sink = output if output is not None else subprocess.DEVNULL
    # The launcher runs as a script in isolated mode: it needs the standard library only, and nothing in
    # the environment or the working folder can change which code it runs.
    proc = subprocess.Popen([sys.executable, "-I", __file__, str(spec_path)],
                            stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, env={"PATH": os.defpath},
                            start_new_session=True, pass_fds=pass_fds, close_fds=True)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        # The launcher answers SIGTERM by killing process 1 of the box and returns once the kernel has
        # taken the whole namespace down; so when it has exited, nothing of the submission is left.
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        return None
    finally:
        _kill_session(proc)


def _kill_session(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
