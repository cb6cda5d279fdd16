"""Run one untrusted command in a box, and take the whole box down when it ends.

Why this exists: a lab submission is code we did not write, run by the grader with the grader's rights.
It must not outlive its grading, read anything but the runtime and its own copy, change what later
submissions are graded with, leave a trace a later run can read, reach the network, or hold the machine's
memory. The grader runs this file as a script, ``python -I sandbox.py SPEC.json`` (see :func:`run_boxed`);
its ``main`` builds the box and then ``exec``s the command inside it.

Two strengths, chosen by :func:`probe` once per grader process:

``namespaces`` (Linux, as root, or where unprivileged user namespaces are allowed)
    A private PID namespace: the command is process 1 of it, so when it exits -- or when the grader kills
    the launcher -- the kernel kills every process it started, ``setsid()`` or not. A private mount
    namespace whose root is a fresh tmpfs holding only the system's ``/usr`` (and its ``/bin``, ``/lib``
    links), a few files of ``/etc``, ``/dev/null`` and its kin, a new ``/proc``, an empty ``/tmp``, and the
    paths the spec names (the interpreter, the virtual environment, the package, the run's own folder), all
    read-only but the scratch folder; the old root is detached (``pivot_root``), so there is nothing else to
    find: no class folder, no checkout, no host ``/tmp`` or its sockets. A private network namespace with
    only loopback, and an IPC namespace. As root, the command runs as a uid of its own drawn from
    :data:`BOX_UIDS` (so process limits are per box); otherwise it keeps no capabilities. A seccomp filter
    refuses the kernel keyring (a channel that would outlive the run), new namespaces and mounts.
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
import platform
import secrets
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

NOBODY = 65534
#: The uids (and gids) the grader gives its boxes, one drawn at random per box: no passwd entry, no files
#: outside the box, and no other box shares one, so a per-user limit or state cannot join two students.
BOX_UIDS = range(0x5E000000, 0x5F000000)

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP = 1, 38, 22

#: What of /etc a Python process may need: the dynamic linker's cache, names of users and hosts, the zone.
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "passwd", "group", "nsswitch.conf", "hosts",
             "localtime", "host.conf")
DEV_NODES = ("null", "zero", "full", "random", "urandom")
SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")


@dataclass(frozen=True)
class Limits:
    """What one submission's processes may use. Each process gets these rlimits; ``processes`` counts
    every process and thread of the box's uid, so it binds per box when the grader runs as root."""

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
    writable: list[str]                      # folders the box may write (bound read-write)
    readable: list[str] = field(default_factory=list)  # paths bound read-only at the same place
    root: str = ""                           # an empty folder to build the box's root in
    limits: Limits = field(default_factory=Limits)
    mode: str = "namespaces"
    uid: int | None = None                   # as root: the uid and gid the command runs as


def box_uid() -> int:
    """A uid for one box, drawn from :data:`BOX_UIDS`."""
    return BOX_UIDS.start + secrets.randbelow(len(BOX_UIDS))


def main(argv: list[str]) -> int:
    raw = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    raw["limits"] = Limits(**raw["limits"])
    spec = Spec(**raw)
    if spec.mode == "namespaces":
        return _run_in_namespaces(spec)
    _apply_limits(spec.limits)
    if spec.uid is not None and os.geteuid() == 0:
        _become(spec.uid)
    os.chdir(spec.cwd)
    os.execve(spec.argv[0], spec.argv, spec.env)
    return 127  # not reached


def _become(uid: int) -> None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


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
    if not spec.root:
        raise OSError(errno.EINVAL, "a namespace box needs a folder to build its root in")
    _build_root(spec, libc, mount)
    _loopback_up()
    _apply_limits(spec.limits)
    if as_root and spec.uid is not None:
        _become(spec.uid)
    else:
        _drop_capabilities(libc)
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    _install_seccomp(libc)
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")  # cleared by setuid: set again
    os.chdir(spec.cwd)
    os.execve(spec.argv[0], spec.argv, spec.env)


def _build_root(spec: Spec, libc: ctypes.CDLL, mount) -> None:  # type: ignore[no-untyped-def]
    """Make ``spec.root`` the box's ``/``, holding the runtime and the named paths only, then pivot into it.

    Why a new root and not the host's read-only: a read-only host still shows every student's folder,
    the repository and its solutions, and the unix sockets in ``/tmp``; a fresh root shows none of them.
    """
    root = spec.root
    _check(mount(b"tmpfs", root.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"size=1m,mode=755"), "root tmpfs")
    inside = lambda path: os.path.join(root, path.lstrip("/"))  # noqa: E731
    for name in SYSTEM_DIRS:
        host = "/" + name
        if os.path.islink(host):
            os.symlink(os.readlink(host), inside(host))
        elif os.path.isdir(host):
            _bind(mount, host, inside(host), writable=False)
    os.mkdir(inside("/etc"), 0o755)
    for name in ETC_FILES:
        if os.path.exists("/etc/" + name):
            _bind(mount, "/etc/" + name, inside("/etc/" + name), writable=False)
    os.mkdir(inside("/dev"), 0o755)
    for name in DEV_NODES:
        if os.path.exists("/dev/" + name):
            _bind(mount, "/dev/" + name, inside("/dev/" + name), writable=True, device=True)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, inside("/dev/" + name))
    os.mkdir(inside("/dev/shm"), 0o755)
    _check(mount(b"tmpfs", inside("/dev/shm").encode(), b"tmpfs", MS_NOSUID | MS_NODEV,
                 b"size=16m,mode=1777"), "/dev/shm")
    os.mkdir(inside("/proc"), 0o755)
    _check(mount(b"proc", inside("/proc").encode(), b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None), "/proc")
    os.mkdir(inside("/tmp"), 0o755)
    _check(mount(b"tmpfs", inside("/tmp").encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"size=64m,mode=1777"), "/tmp")
    for path in _outermost(spec.readable):
        _bind(mount, path, inside(path), writable=False)
    for path in sorted(set(spec.writable), key=len):
        _bind(mount, path, inside(path), writable=True)
    os.chdir(root)
    pivot_root = {"x86_64": 155, "aarch64": 41, "riscv64": 41}.get(platform.machine())
    if pivot_root is None:
        raise OSError(errno.ENOSYS, f"no pivot_root number known for {platform.machine()}")
    _check(libc.syscall(pivot_root, b".", b"."), "pivot_root")
    _check(libc.umount2(b".", MNT_DETACH), "detach the old root")
    os.chdir("/")
    _check(mount(None, b"/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, None), "root read-only")


def _outermost(paths: list[str]) -> list[str]:
    """The paths with any that lie inside another dropped (a venv's site-packages inside the venv)."""
    real = sorted({os.path.realpath(p) for p in paths if os.path.exists(p)} | {p for p in paths if os.path.exists(p)},
                  key=len)
    kept: list[str] = []
    for path in real:
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return kept


def _bind(mount, source: str, target: str, writable: bool, device: bool = False) -> None:  # type: ignore[no-untyped-def]
    """Bind ``source`` at ``target`` (making the way there), read-only unless ``writable``."""
    is_dir = os.path.isdir(source)
    os.makedirs(target if is_dir else os.path.dirname(target), mode=0o755, exist_ok=True)
    if not is_dir and not os.path.exists(target):
        Path(target).touch(mode=0o644)
    _check(mount(source.encode(), target.encode(), None, MS_BIND | MS_REC, None), f"bind {source}")
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | (0 if writable else MS_RDONLY) | (0 if device else MS_NODEV)
    kept = os.statvfs(target).f_flag  # flags the kernel will not let a remount drop, kept as they are
    flags |= (MS_NOEXEC if kept & os.ST_NOEXEC else 0) | (MS_NOATIME if kept & os.ST_NOATIME else 0)
    flags |= (MS_NODIRATIME if kept & os.ST_NODIRATIME else 0) | (MS_RELATIME if kept & os.ST_RELATIME else 0)
    if device:
        flags |= MS_NODEV if kept & os.ST_NODEV else 0
    _check(mount(None, target.encode(), None, flags, None), f"remount {source}")


# Linux system call numbers (x86_64, aarch64) of what a box never needs: the keyring, namespaces, mounts.
_SYSCALLS = {
    "x86_64": {"arch": 0xC000003E, "deny": [248, 249, 250, 272, 308, 165, 166, 155, 161, 321, 298, 428, 429, 430,
                                             432], "clone": 56, "clone3": 435, "x32": True},
    "aarch64": {"arch": 0xC00000B7, "deny": [217, 218, 219, 97, 268, 40, 39, 41, 51, 280, 241, 428, 429, 430, 432],
                "clone": 220, "clone3": 435, "x32": False},
}


def seccomp_program(machine: str) -> list[tuple[int, int, int, int]] | None:
    """A classic-BPF seccomp filter as (code, jt, jf, k) rows, or None where the machine is not known.

    Refused with EPERM: add_key, request_key, keyctl (a key stored by one run would outlive it and be
    readable by the next), unshare, setns, mount, umount2, pivot_root, chroot, bpf, perf_event_open and
    the new mount API; clone with a namespace flag; clone3 answers ENOSYS so the C library falls back to
    clone, whose flags a filter can read. Any other architecture's calls (i386 through int 0x80, x32)
    are refused: their numbers mean other calls.
    """
    table = _SYSCALLS.get(machine)
    if table is None:
        return None
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, deny, nosys = 0x7FFF0000, 0x00050000 | errno.EPERM, 0x00050000 | errno.ENOSYS
    namespaces = CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET
    body: list[tuple[int, int, int, int]] = []
    # Jumps are written with symbolic targets first, then resolved: ("ALLOW", "DENY", "NOSYS", "CLONE").
    prog: list[tuple[int, object, object, int]] = [(ld, 0, 0, 4), (jeq, 0, "NOSYS", table["arch"]), (ld, 0, 0, 0)]
    if table["x32"]:
        prog.append((jge, "NOSYS", 0, 0x40000000))
    for number in table["deny"]:
        prog.append((jeq, "DENY", 0, number))
    prog += [(jeq, "NOSYS", 0, table["clone3"]), (jeq, "CLONE", 0, table["clone"]), (ret, 0, 0, allow)]
    labels = {"CLONE": len(prog)}
    prog += [(ld, 0, 0, 16), (jset, "DENY", 0, namespaces), (ret, 0, 0, allow)]
    labels["DENY"] = len(prog)
    prog.append((ret, 0, 0, deny))
    labels["NOSYS"] = len(prog)
    prog.append((ret, 0, 0, nosys))
    for index, (code, jt, jf, k) in enumerate(prog):
        resolve = lambda target: labels[target] - index - 1 if isinstance(target, str) else target  # noqa: E731
        body.append((code, resolve(jt), resolve(jf), k))
    return body


def _install_seccomp(libc: ctypes.CDLL) -> None:
    program = seccomp_program(platform.machine())
    if program is None:
        return  # an architecture we have no numbers for: the namespaces and the uid still hold

    class Filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(Filter))]

    rows = (Filter * len(program))(*[Filter(*row) for row in program])
    fprog = Program(len(program), rows)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    _check(libc.prctl(PR_SET_SECCOMP, 2, ctypes.addressof(fprog), 0, 0), "seccomp")


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
        root = Path(tmp) / "root"
        root.mkdir()
        uid = box_uid() if os.geteuid() == 0 else None
        if uid is not None:
            os.chown(scratch, uid, uid)
        # Every step of a real run, tried: the interpreter starts, writes its scratch, and sees no /work.
        check = ("import os, sys; open(os.path.join(sys.argv[1], 'x'), 'w').write('ok'); "
                 "sys.exit(os.path.exists(sys.argv[2]))")
        spec = Spec(argv=[sys.executable, "-c", check, str(scratch), tmp + "/spec.json"],
                    env={"PATH": "/usr/bin:/bin"}, cwd=str(scratch), writable=[str(scratch)],
                    readable=interpreter_paths(), root=str(root), uid=uid)
        try:
            proc = run_boxed(spec, Path(tmp) / "spec.json", timeout=60, output=None)
        except (OSError, subprocess.SubprocessError):
            return "rlimits"
        return "namespaces" if proc == 0 and (scratch / "x").exists() else "rlimits"


def others_can_reach(paths: list[str]) -> bool:
    """Whether a user of no group can enter every folder on the way to each path (the rlimits box, run as
    root, switches uid only then: it has no root of its own to show the interpreter through)."""
    for path in paths:
        parts = Path(os.path.realpath(path)).parts
        for depth in range(1, len(parts)):
            if not os.stat(os.path.join(*parts[:depth])).st_mode & 0o001:
                return False
    return True


def interpreter_paths() -> list[str]:
    """What the box must read to run Python and import pytest and corolab."""
    import corolab

    prefixes = {sys.prefix, sys.base_prefix}
    paths = prefixes | {sys.executable, os.path.realpath(sys.executable), str(Path(corolab.__file__).resolve().parents[1])}
    # Only what lies inside the installations: a test runner puts its own folders (a checkout, the tests)
    # on sys.path, and those must stay out of the box.
    paths |= {p for p in sys.path if p and os.path.isdir(p) and any(p.startswith(x + os.sep) for x in prefixes)}
    return sorted(paths)


def run_boxed(spec: Spec, spec_path: Path, timeout: float, output: int | None,
              pass_fds: tuple[int, ...] = (), watch: Callable[[], bool] | None = None) -> int | None:
    """Run ``spec`` through the launcher; return its exit code, or ``None`` when it was stopped.

    It is stopped when ``timeout`` seconds pass, or when ``watch`` (called about 20 times a second)
    returns True. Output goes to the file descriptor ``output`` (a file, never a pipe: a pipe kept open
    by a leftover process would hold the grader). Whatever happens, the launcher's whole session is
    killed before this returns; in ``namespaces`` mode that takes the PID namespace, and everything in
    it, down.
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
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                return proc.wait(timeout=0.05 if watch is not None else max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline or (watch is not None and watch()):
                    break
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
