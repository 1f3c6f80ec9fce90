"""The OCI runtime spec (runc's ``config.json``) for one container, from its Pod and image.

Pure functions: what the Pod asks for (``securityContext``, mounts, command)
and what the image says (``Entrypoint``, ``Cmd``, ``Env``, ``User``) go in, a
spec comes out; the agent only writes it next to the container's overlay root.

What maps where, as containerd's CRI plugin does it:

- ``command`` replaces the image's Entrypoint (and drops its Cmd), ``args``
  replace Cmd; ``$(VAR)`` expands from the container's env;
- the user is ``runAsUser``/``runAsGroup`` (container over Pod), else the
  image's ``User`` (a name is looked up in the image's ``/etc/passwd``);
  ``fsGroup`` and ``supplementalGroups`` become additional groups;
- ``runAsNonRoot`` is checked against that user with the kubelet's own messages;
- ``readOnlyRootFilesystem`` -> ``root.readonly``; ``allowPrivilegeEscalation:
  false`` -> ``noNewPrivileges``; ``capabilities.add/drop`` on containerd's
  default set; ``privileged`` gets every capability;
- volumes and the termination message file are bind mounts.
"""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any

from editflow.devstack.kubelet.podspec import ContainerConfigError

#: containerd's default capability set for CRI containers.
DEFAULT_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

#: Every capability runc 1.1 knows, for ``privileged`` and ``add: [ALL]``.
ALL_CAPABILITIES = (
    *DEFAULT_CAPABILITIES,
    "CAP_DAC_READ_SEARCH",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_LEASE",
    "CAP_AUDIT_CONTROL",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)


def effective_security(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, Any]:
    """The container's securityContext with the Pod's user settings as defaults."""
    pod_sc = pod["spec"].get("securityContext") or {}
    merged = {k: pod_sc[k] for k in ("runAsUser", "runAsGroup", "runAsNonRoot") if k in pod_sc}
    merged.update(container.get("securityContext") or {})
    return merged


def _passwd(layers: tuple[Path, ...], file: str) -> list[list[str]]:
    """Entries of ``/etc/passwd`` or ``/etc/group`` from the topmost layer that has it."""
    for layer in reversed(layers):
        path = layer / "etc" / file
        if path.is_file():
            return [line.split(":") for line in path.read_text(errors="replace").splitlines()]
    return []


def image_user(user: str, layers: tuple[Path, ...]) -> tuple[int | None, int | None, str]:
    """``(uid, gid, username)`` of an image's ``User``: uid None when a name is not found."""
    name, _, group = user.partition(":")
    uid: int | None
    gid: int | None = None
    username = ""
    if not name:
        uid = 0
    elif name.isdigit():
        uid = int(name)
    else:
        username = name
        entry = next((e for e in _passwd(layers, "passwd") if e[0] == name and len(e) > 3), None)
        uid = int(entry[2]) if entry else None
        gid = int(entry[3]) if entry else None
    if group.isdigit():
        gid = int(group)
    elif group:
        entry = next((e for e in _passwd(layers, "group") if e[0] == group and len(e) > 2), None)
        gid = int(entry[2]) if entry else gid
    return uid, gid, username


def primary_gid(uid: int, layers: tuple[Path, ...]) -> int:
    entry = next(
        (e for e in _passwd(layers, "passwd") if len(e) > 3 and e[2] == str(uid)),
        None,
    )
    return int(entry[3]) if entry else 0


def home_dir(uid: int, layers: tuple[Path, ...]) -> str:
    entry = next((e for e in _passwd(layers, "passwd") if len(e) > 5 and e[2] == str(uid)), None)
    return entry[5] if entry and entry[5] else "/"


def format_pod(pod: dict[str, Any]) -> str:
    """The kubelet's ``format.Pod``: ``name_namespace(uid)``."""
    meta = pod["metadata"]
    return f"{meta['name']}_{meta['namespace']}({meta['uid']})"


def verify_run_as_non_root(
    pod: dict[str, Any],
    container: dict[str, Any],
    security: dict[str, Any],
    image_uid: int | None,
    image_username: str,
) -> None:
    """The kubelet's ``verifyRunAsNonRoot``, word for word."""
    if not security.get("runAsNonRoot"):
        return
    where = f'(pod: "{format_pod(pod)}", container: {container["name"]})'
    if security.get("runAsUser") is not None:
        if int(security["runAsUser"]) == 0:
            raise ContainerConfigError(f"container's runAsUser breaks non-root policy {where}")
        return
    if image_uid is None and image_username:
        raise ContainerConfigError(
            f"container has runAsNonRoot and image has non-numeric user ({image_username}), "
            f"cannot verify user is non-root {where}"
        )
    if image_uid == 0:
        raise ContainerConfigError(f"container has runAsNonRoot and image will run as root {where}")


def capabilities(security: dict[str, Any]) -> list[str]:
    """containerd's default set with ``add``/``drop`` applied (``ALL`` allowed in both)."""
    if security.get("privileged"):
        return list(ALL_CAPABILITIES)
    caps = security.get("capabilities") or {}

    def names(items: list[str]) -> set[str]:
        out: set[str] = set()
        for item in items:
            upper = item.upper()
            if upper == "ALL":
                out.update(ALL_CAPABILITIES)
            else:
                out.add(upper if upper.startswith("CAP_") else f"CAP_{upper}")
        return out

    added = names(caps.get("add") or [])
    dropped = names(caps.get("drop") or [])
    # As in containerd: drop ALL keeps only what is explicitly added.
    if "ALL" in {d.upper() for d in caps.get("drop") or []}:
        return sorted(added)
    return sorted((set(DEFAULT_CAPABILITIES) | added) - dropped)


def bind(source: Path | str, destination: str, *, readonly: bool = False) -> dict[str, Any]:
    options = ["rbind", "ro" if readonly else "rw"]
    return {"destination": destination, "type": "bind", "source": str(source), "options": options}


def runtime_spec(
    *,
    args: list[str],
    env: dict[str, str],
    cwd: str,
    uid: int,
    gid: int,
    additional_gids: list[int],
    hostname: str,
    readonly_root: bool,
    no_new_privileges: bool,
    caps: list[str],
    mounts: list[dict[str, Any]],
    netns: Path | None,
) -> dict[str, Any]:
    """A complete ``config.json`` (root at ``rootfs`` next to it), modelled on ``runc spec``."""
    nofile = min(1048576, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    namespaces: list[dict[str, str]] = [
        {"type": "pid"},
        {"type": "ipc"},
        {"type": "uts"},
        {"type": "mount"},
    ]
    if netns is not None:
        namespaces.append({"type": "network", "path": str(netns)})
    process: dict[str, Any] = {
        "terminal": False,
        "user": {"uid": uid, "gid": gid},
        "args": args,
        "env": [f"{k}={v}" for k, v in env.items()],
        "cwd": cwd or "/",
        "capabilities": {key: caps for key in ("bounding", "effective", "permitted")},
        # containerd's 1048576 where the host allows it; runc may not raise the hard limit.
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}],
        "noNewPrivileges": no_new_privileges,
    }
    if additional_gids:
        process["user"]["additionalGids"] = additional_gids
    return {
        "ociVersion": "1.0.2-dev",
        "process": process,
        "root": {"path": "rootfs", "readonly": readonly_root},
        "hostname": hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": [
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620",
                    "gid=5",
                ],
            },
            {
                "destination": "/dev/shm",  # noqa: S108 - inside the container
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            },
            {
                "destination": "/dev/mqueue",
                "type": "mqueue",
                "source": "mqueue",
                "options": ["nosuid", "noexec", "nodev"],
            },
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"],
            },
            *mounts,
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": namespaces,
            "maskedPaths": [
                "/proc/acpi",
                "/proc/asound",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/sys/firmware",
                "/proc/scsi",
            ],
            "readonlyPaths": [
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger",
            ],
        },
    }
