"""Plan a container that runs in its image: command, env, user, mounts and the runc bundle.

The counterpart of :func:`.podspec.plan_container` (which maps images to host
commands): here no path is rewritten, because the container sees its own root
(an overlay of the image's layers) and its volumes bind-mounted where the Pod
says.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from editflow.devstack.kubelet import oci
from editflow.devstack.kubelet.config import KubeletConfig, image_repository
from editflow.devstack.kubelet.images import ImageInfo
from editflow.devstack.kubelet.podspec import (
    ContainerConfigError,
    ContainerPlan,
    Lookup,
    RuncPlan,
    expand,
    resolve_env,
)

_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def container_id(pod: dict[str, Any], name: str) -> str:
    """runc's name for the container: unique per Pod instance, stable across agent restarts."""
    return _ID_UNSAFE.sub("-", f"{pod['metadata']['uid']}-{name}")


def pod_etc_files(pod: dict[str, Any], pod_dir: Path) -> tuple[Path, Path]:
    """The Pod's ``/etc/hosts`` and ``/etc/hostname``, as the kubelet bind-mounts them."""
    name = pod["metadata"]["name"]
    etc = pod_dir / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    hosts, hostname = etc / "hosts", etc / "hostname"
    hosts.write_text(f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n127.0.0.1\t{name}\n")
    hostname.write_text(name + "\n")
    hosts.chmod(0o644)
    hostname.chmod(0o644)
    return hosts, hostname


def _argv(container: dict[str, Any], image: ImageInfo, env: dict[str, str]) -> list[str]:
    command = [expand(c, env) for c in container.get("command") or []]
    args = [expand(a, env) for a in container.get("args") or []]
    entrypoint = list(image.config.get("Entrypoint") or [])
    cmd = list(image.config.get("Cmd") or [])
    if command:
        return [*command, *args]
    return [*entrypoint, *(args or cmd)]


def plan_image_container(
    pod: dict[str, Any],
    container: dict[str, Any],
    *,
    image: ImageInfo,
    pod_dir: Path,
    volumes: dict[str, Path],
    config: KubeletConfig,
    lookup: Lookup,
    node_alloc: dict[str, str],
    service_env: dict[str, str],
    netns: Path | None,
) -> ContainerPlan:
    """Everything needed to run one container in its image with runc."""
    name = container["name"]
    security = oci.effective_security(pod, container)
    image_uid, image_gid, username = oci.image_user(image.user, image.layers)
    oci.verify_run_as_non_root(pod, container, security, image_uid, username)
    if security.get("runAsUser") is not None:
        uid = int(security["runAsUser"])
        gid = oci.primary_gid(uid, image.layers)
    elif image_uid is None:
        raise ContainerConfigError(
            f'image {container["image"]}: user "{username}" is not in the image\'s /etc/passwd'
        )
    else:
        uid = image_uid
        gid = image_gid if image_gid is not None else oci.primary_gid(uid, image.layers)
    if security.get("runAsGroup") is not None:
        gid = int(security["runAsGroup"])
    pod_sc = pod["spec"].get("securityContext") or {}
    groups = [int(g) for g in pod_sc.get("supplementalGroups") or []]
    if pod_sc.get("fsGroup") is not None:
        groups.insert(0, int(pod_sc["fsGroup"]))

    image_env = dict(item.split("=", 1) for item in image.config.get("Env") or [] if "=" in item)
    container_env = resolve_env(pod, container, lookup, node_alloc)
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        **image_env,
        "HOSTNAME": pod["metadata"]["name"],
        **service_env,
        **container_env,
    }
    env.setdefault("HOME", oci.home_dir(uid, image.layers))
    argv = _argv(container, image, container_env)
    if not argv:
        raise ContainerConfigError(
            f'image "{container["image"]}" has no entrypoint and the container no command'
        )

    term_container = container.get("terminationMessagePath") or "/dev/termination-log"
    term_host = pod_dir / "termination" / name
    term_host.parent.mkdir(parents=True, exist_ok=True)
    term_host.touch(exist_ok=True)  # never truncate: an adopted container may have written it
    term_host.chmod(0o666)  # any container user writes its message, as on a node
    hosts, hostname = pod_etc_files(pod, pod_dir)
    mounts = [
        oci.bind(hosts, "/etc/hosts"),
        oci.bind(hostname, "/etc/hostname", readonly=True),
        oci.bind(term_host, term_container),
    ]
    for mount in container.get("volumeMounts") or []:
        base = volumes.get(mount["name"])
        if base is None:
            raise ContainerConfigError(f"volumeMount {mount['name']}: no such volume in the Pod")
        source = base / mount["subPath"] if mount.get("subPath") else base
        if mount.get("subPath") and not source.exists():
            source.mkdir(parents=True)  # as the kubelet does; an existing file mounts as a file
        mounts.append(oci.bind(source, mount["mountPath"], readonly=bool(mount.get("readOnly"))))

    state = pod_dir / "containers" / name
    spec = oci.runtime_spec(
        args=argv,
        env=env,
        cwd=container.get("workingDir") or image.config.get("WorkingDir") or "/",
        uid=uid,
        gid=gid,
        additional_gids=groups,
        hostname=pod["metadata"]["name"],
        readonly_root=bool(security.get("readOnlyRootFilesystem")),
        no_new_privileges=security.get("allowPrivilegeEscalation") is False,
        caps=oci.capabilities(security),
        mounts=mounts,
        netns=netns,
    )
    runc = RuncPlan(
        runc=config.runc,
        state_root=config.root / "runc",
        container_id=container_id(pod, name),
        bundle=state / "bundle",
        layers=image.layers,
        spec=spec,
    )
    return ContainerPlan(
        name=name,
        argv=[
            config.runc,
            "--root",
            str(runc.state_root),
            "run",
            "--bundle",
            str(runc.bundle),
            runc.container_id,
        ],
        env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
        cwd=state,
        log_path=pod_dir / "logs" / f"{name}.log",
        termination_path=term_host,
        termination_policy=container.get("terminationMessagePolicy", "File"),
        image=container["image"],
        spec=container,
        runc=runc,
        image_id=f"{image_repository(image.reference)}@{image.digest}",
    )
