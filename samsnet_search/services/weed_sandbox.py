"""Run SeaweedFS with its internal ports in a private network namespace; serve only its S3 API.

`weed mini` opens a master, a volume server, a filer and an admin server, each with an HTTP
and a gRPC port, and none of them checks credentials: only the S3 gateway verifies request
signatures. So this process, which `infra up` starts in place of `weed` itself:

1. binds the S3 address (--host, --port) in the machine's network namespace;
2. moves itself into a new network namespace that has only a loopback interface (with a new
   user namespace when not root, so no privilege is needed);
3. starts `weed mini` there: its ports exist only inside that namespace, so nothing outside
   (this host's other users, the network with `--host`) can connect to them;
4. forwards each connection on the S3 address, byte for byte, to the S3 gateway's unix socket
   (--socket), which lives in the 0700 state folder.

With --no-namespace, step 2 is skipped: weed's ports are then on this machine's loopback
(`infra up --no-isolation`, where namespaces are not allowed). It stops weed on
SIGTERM/SIGINT and exits when weed exits. Run as
`python -m samsnet_search.services.weed_sandbox --host H --port P --socket S -- weed mini ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import errno
import fcntl
import os
import signal
import socket
import struct
import subprocess
import sys

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
EXIT_BIND, EXIT_NAMESPACE = 2, 3
CHUNK = 256 * 1024


# What to do when the kernel refuses: said by the sandbox and by `infra up`.
NAMESPACE_HELP = (
    "allow user namespaces (sysctl kernel.unprivileged_userns_clone=1, on Ubuntu "
    "kernel.apparmor_restrict_unprivileged_userns=0; in Docker the default seccomp profile forbids them), "
    "run as root, or start with `infra up --no-isolation` (SeaweedFS's master, volume and filer ports "
    "then answer anyone on this host's loopback)"
)


class NamespaceError(OSError):
    """The kernel refused a private network namespace."""


_libc = ctypes.CDLL(None, use_errno=True)


def _unshare(flags: int) -> None:
    if _libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        raise NamespaceError(err, f"unshare: {os.strerror(err)}")


def _map_own_ids(uid: int, gid: int) -> None:
    """In a new user namespace, map our own uid/gid to themselves (files stay ours)."""
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")  # required before an unprivileged gid_map write
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{uid} {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{gid} {gid} 1")


def _loopback_up() -> None:
    """`ip link set lo up` without iproute2: a new namespace's loopback starts down."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s, SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))


def enter_private_network() -> None:
    """Move this (single-threaded) process into a new network namespace with loopback up."""
    uid, gid = os.geteuid(), os.getegid()
    try:
        if uid == 0:
            _unshare(CLONE_NEWNET)
        else:
            _unshare(CLONE_NEWUSER | CLONE_NEWNET)
            _map_own_ids(uid, gid)
        _loopback_up()
    except OSError as e:
        raise NamespaceError(e.errno or errno.EPERM, str(e)) from None


def _die_with(parent: int) -> None:
    """In weed's child before exec: SIGKILL it when this process dies, even by SIGKILL.

    Otherwise a killed sandbox would leave weed running, unreachable, holding its data
    folder and /tmp sockets, and the next `infra up` would find them taken.
    """
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def namespace_problem() -> str | None:
    """None if this machine lets us make a private network namespace, else the kernel's answer.

    A child process tries (unsharing needs a single-threaded process, and must not move us).
    """
    probe = "import samsnet_search.services.weed_sandbox as w; w.enter_private_network()"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    if done.returncode == 0:
        return None
    lines = done.stderr.strip().splitlines()
    return lines[-1].split(": ", 1)[-1] if lines else f"exit code {done.returncode}"


def _listen(host: str, port: int) -> socket.socket:
    family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(addr)
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # pass on a half-close, the other direction may still run
    except (ConnectionError, OSError):
        writer.close()


async def _forward(unix_path: str, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
    try:
        weed_r, weed_w = await asyncio.open_unix_connection(unix_path)
    except OSError:
        client_w.close()  # weed not (yet) listening: the client sees a closed connection
        return
    try:
        await asyncio.gather(_pipe(client_r, weed_w), _pipe(weed_r, client_w))
    finally:
        for w in (weed_w, client_w):
            w.close()


async def _serve(listener: socket.socket, unix_path: str, weed: subprocess.Popen, stop_grace: float) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await asyncio.start_server(lambda r, w: _forward(unix_path, r, w), sock=listener)
    while weed.poll() is None and not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=0.5)
        except asyncio.TimeoutError:
            pass
    server.close()
    if weed.poll() is None:
        weed.terminate()
        try:
            await loop.run_in_executor(None, weed.wait, stop_grace)
        except subprocess.TimeoutExpired:
            weed.kill()
            weed.wait()
        return 0
    print(f"weed_sandbox: weed exited with code {weed.returncode}", file=sys.stderr, flush=True)
    return weed.returncode or 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m samsnet_search.services.weed_sandbox")
    parser.add_argument("--host", required=True, help="address of the S3 API in this machine's namespace")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--socket", required=True, help="weed's S3 unix socket (-s3.localSocket)")
    parser.add_argument("--stop-grace", type=float, default=15.0, help="seconds weed gets after SIGTERM")
    parser.add_argument(
        "--no-namespace", action="store_true", help="run weed in this namespace (its ports on loopback)"
    )
    parser.add_argument("weed", nargs=argparse.REMAINDER, help="-- weed mini ...")
    args = parser.parse_args(argv)
    weed_cmd = args.weed[1:] if args.weed[:1] == ["--"] else args.weed
    if not weed_cmd:
        parser.error("give the weed command after --")
    try:
        listener = _listen(args.host, args.port)  # before unsharing: this socket stays outside
    except OSError as e:
        print(f"weed_sandbox: cannot listen on {args.host}:{args.port}: {e.strerror or e}", file=sys.stderr, flush=True)
        return EXIT_BIND
    try:
        if not args.no_namespace:
            enter_private_network()
    except NamespaceError as e:
        print(
            f"weed_sandbox: cannot make a private network namespace for SeaweedFS's internal ports ({e.strerror}); "
            + NAMESPACE_HELP,
            file=sys.stderr,
            flush=True,
        )
        return EXIT_NAMESPACE
    os.umask(0o077)  # weed's unix sockets (some in /tmp) then admit only this user
    try:
        os.unlink(args.socket)  # a stale socket from a killed run would make weed's listen fail
    except FileNotFoundError:
        pass
    me = os.getpid()
    weed = subprocess.Popen(weed_cmd, stdin=subprocess.DEVNULL, preexec_fn=lambda: _die_with(me))
    return asyncio.run(_serve(listener, args.socket, weed, args.stop_grace))


if __name__ == "__main__":
    sys.exit(main())
