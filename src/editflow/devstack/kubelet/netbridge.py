"""Pod networking: a network namespace per Pod, bridged to the platform's loopback services.

**The choice.** Every Pod that runs in its image gets its own network namespace
with nothing but a loopback interface, so two Pods (two replicas of one
Deployment) can both listen on 8080 on one node. The platform, though, lives on
the host's 127.0.0.1 (kube-apiserver, NATS, MinIO, the registry), and the
Pods are told those addresses in their env. So a small *bridge* process per Pod
(:func:`main`) listens inside the Pod's namespace on 127.0.0.1 at each of those
ports and relays each connection to the same port on the host's loopback:
inside a Pod, ``127.0.0.1:<nats port>`` is NATS, ``127.0.0.1:8080`` is the Pod
itself. No veth pair, no routes, no iptables: nothing on the shared machine's
network changes, and parallel stacks never compete for subnets. A Pod with
``hostNetwork: true`` gets no namespace and shares the host's, as on a node.
Not modelled: Pod IPs (``status.podIP`` stays 127.0.0.1, each Pod's own) and so
Pod-to-Pod traffic other than through a ``hostPort``; Services have no proxy here
anyway.

The other direction: a container port with a ``hostPort`` is published on the
host's 127.0.0.1 at that port (as a CNI portmap would), and the scheduler check
refuses a second Pod asking for the same host port on the node. Probes do not
need it: the agent opens its probe sockets inside the Pod's namespace
(:func:`connect_in`), as the real kubelet probes the Pod's own address.

Which host ports are bridged is the file ``host-ports.json`` in the kubelet's
root (the stack writes its servers' ports there, a test may add its own);
running bridges re-read it, so a port published later reaches running Pods too.
Like the shims, a bridge is its own process in its own session: it outlives an
agent restart, and the new agent adopts it by its pid file.

Usage (by the agent, not by people)::

    python -m editflow.devstack.kubelet.netbridge POD_DIR KUBELET_ROOT [HOSTPORT:PORT ...]
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


def host_ports_file(root: Path) -> Path:
    return root / "host-ports.json"


def publish_host_ports(root: Path, ports: list[int]) -> None:
    """Add ``ports`` to the set every Pod can reach on its 127.0.0.1 (atomic rewrite)."""
    path = host_ports_file(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    known = set(read_host_ports(root))
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(sorted(known | {int(p) for p in ports})))
    tmp.replace(path)


def read_host_ports(root: Path) -> list[int]:
    try:
        return [int(p) for p in json.loads(host_ports_file(root).read_text())]
    except (FileNotFoundError, ValueError):
        return []


# -- namespaces ------------------------------------------------------------------
def netns_path(pod_dir: Path) -> Path:
    return pod_dir / "netns"


def create_netns(path: Path) -> None:
    """A persistent network namespace bound to ``path`` with its loopback up (idempotent)."""
    if path.exists() and _is_mounted(path):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    subprocess.run(["unshare", f"--net={path}", "true"], check=True, capture_output=True)
    subprocess.run(
        ["nsenter", f"--net={path}", "ip", "link", "set", "lo", "up"],
        check=True,
        capture_output=True,
    )


def remove_netns(path: Path) -> None:
    with contextlib.suppress(Exception):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
    path.unlink(missing_ok=True)


def _is_mounted(path: Path) -> bool:
    target = str(path.resolve())
    with open("/proc/self/mountinfo") as fh:
        return any(line.split()[4] == target for line in fh)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def entered(path: Path) -> Iterator[None]:
    """Run the block with *this thread* in the namespace at ``path`` (setns is per thread)."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(path, os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def connect_in(path: Path, port: int, timeout: float) -> socket.socket:
    """A TCP connection to 127.0.0.1:``port`` inside the namespace at ``path``.

    A socket belongs to the namespace it was created in, so only its creation
    needs the switch; the connect and all I/O happen back in the caller's namespace.
    """
    with entered(path):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return sock


# -- the bridge process -------------------------------------------------------------
def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while chunk := src.recv(1 << 18):
            dst.sendall(chunk)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def _relay(client: socket.socket, upstream: socket.socket) -> None:
    upstream.settimeout(None)
    back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
    back.start()
    _pump(client, upstream)
    back.join()
    client.close()
    upstream.close()


def _serve(listener: socket.socket, dial: object) -> None:
    while True:
        client, _ = listener.accept()
        try:
            upstream = dial()  # type: ignore[operator]
        except OSError:
            client.close()
            continue
        threading.Thread(target=_relay, args=(client, upstream), daemon=True).start()


def _listen(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    return sock


def main(pod_dir: Path, root: Path, published: list[tuple[int, int]]) -> int:
    netns = netns_path(pod_dir)
    for host_port, pod_port in published:
        listener = _listen(host_port)  # in the host namespace: a hostPort

        def dial(port: int = pod_port) -> socket.socket:
            return connect_in(netns, port, timeout=5)

        threading.Thread(target=_serve, args=(listener, dial), daemon=True).start()
    bridged: set[int] = set()
    ready = pod_dir / "netbridge.ready"
    while True:
        for port in read_host_ports(root):
            if port in bridged:
                continue
            bridged.add(port)
            try:
                with entered(netns):
                    listener = _listen(port)
            except OSError as exc:
                print(f"cannot bridge host port {port} into the pod: {exc}", file=sys.stderr)
                continue

            def dial_host(port: int = port) -> socket.socket:
                return socket.create_connection(("127.0.0.1", port), timeout=5)

            threading.Thread(target=_serve, args=(listener, dial_host), daemon=True).start()
        if not ready.exists():
            ready.write_text(json.dumps(sorted(bridged)))
        time.sleep(0.5)


class PortForward:
    """``kubectl port-forward`` for the local platform, in-process: 127.0.0.1:``host_port`` on
    the host relays to 127.0.0.1:``port`` inside the Pod's namespace (tests, ``dev up``).

    ``host_port=0`` picks a free one; :attr:`host_port` says which. Stops with the process,
    or with :meth:`close` (connections already relayed finish on their own).
    """

    def __init__(self, netns: Path, port: int, host_port: int = 0) -> None:
        self.netns = netns
        self.port = port
        self.listener = _listen(host_port)
        self.host_port = int(self.listener.getsockname()[1])
        threading.Thread(
            target=self._run, name=f"port-forward-{self.host_port}", daemon=True
        ).start()

    def _run(self) -> None:
        with contextlib.suppress(OSError):  # closed
            _serve(self.listener, lambda: connect_in(self.netns, self.port, timeout=5))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()

    def __enter__(self) -> PortForward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- used by the agent -------------------------------------------------------------
def _pid_file(pod_dir: Path) -> Path:
    return pod_dir / "netbridge.pid"


def bridge_alive(pod_dir: Path) -> bool:
    try:
        pid = int(_pid_file(pod_dir).read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return False
    return b"kubelet.netbridge" in cmdline and str(pod_dir).encode() in cmdline


def ensure_bridge(
    pod_dir: Path, root: Path, published: list[tuple[int, int]]
) -> subprocess.Popen[bytes] | None:
    """Create the Pod's namespace and start its bridge unless one already runs (adoption);
    returns the process started, for the caller to reap."""
    create_netns(netns_path(pod_dir))
    if bridge_alive(pod_dir):
        return None
    (pod_dir / "netbridge.ready").unlink(missing_ok=True)
    argv = [sys.executable, "-m", "editflow.devstack.kubelet.netbridge", str(pod_dir), str(root)]
    argv += [f"{h}:{p}" for h, p in published]
    with (pod_dir / "netbridge.log").open("ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # outlives the agent, like the shims
        )
    _pid_file(pod_dir).write_text(str(proc.pid))
    deadline = time.monotonic() + 10
    while not (pod_dir / "netbridge.ready").exists() and time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"the pod network bridge exited: {(pod_dir / 'netbridge.log').read_text()[-500:]}"
            )
        time.sleep(0.05)
    return proc


def stop_bridge(pod_dir: Path) -> None:
    """Stop the bridge and remove the namespace (the Pod is gone)."""
    if bridge_alive(pod_dir):
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(_pid_file(pod_dir).read_text()), 9)
    remove_netns(netns_path(pod_dir))


if __name__ == "__main__":
    pairs = [tuple(int(x) for x in arg.split(":", 1)) for arg in sys.argv[3:]]
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]), pairs))  # type: ignore[arg-type]
