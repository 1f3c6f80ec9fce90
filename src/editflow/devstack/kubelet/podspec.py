"""Turn a Pod's container spec into a local launch plan.

No mount namespaces here: a volume is a per-pod directory, and the
container's view of the filesystem is kept by *path mapping*: every
``mountPath`` (and the ``terminationMessagePath``) that appears at the start
of a path in ``command``, ``args``, ``env`` values or ``workingDir`` is
rewritten to the volume's directory. ``--flag=/models/x`` and ``/models/x``
both map; a path under no mount is left as it is.

Errors follow the kubelet's split: :class:`ImageNotMapped` fails the Pod
(like an image pull error that can never succeed here), while
:class:`ContainerConfigError` (a missing Secret key, say) keeps it Pending
and is retried, as ``CreateContainerConfigError`` is.
"""

from __future__ import annotations

import base64
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_CEILING
from pathlib import Path
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from editflow.devstack.kubelet.config import KubeletConfig, which_in

Lookup = Callable[[str, str, str], dict[str, Any] | None]
"""lookup(kind, namespace, name) -> the Secret/ConfigMap dict, or None if absent."""

TokenSource = Callable[[dict[str, Any], str | None, int], str]
"""token(pod, audience, expirationSeconds) -> a service-account token bound to the pod."""


class ImageNotMapped(Exception):
    """The image has no local runtime: the Pod fails, like an image that cannot be pulled."""


class ContainerConfigError(Exception):
    """The container cannot be configured yet (missing Secret/ConfigMap key): retry later."""


@dataclass(frozen=True)
class RuncPlan:
    """How a container runs in its image: an OCI bundle on an overlay of the image's layers."""

    runc: str
    state_root: Path  # runc --root: one per kubelet
    container_id: str
    bundle: Path  # config.json and the rootfs mount point
    layers: tuple[Path, ...]  # bottom first
    spec: dict[str, Any]


@dataclass
class ContainerPlan:
    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    termination_path: Path
    termination_policy: str
    image: str
    #: The container as the Pod spec has it (probes, ports); ``{}`` in old plans.
    spec: dict[str, Any] = field(default_factory=dict)
    #: Set when the container runs in its image with runc (else: a host process).
    runc: RuncPlan | None = None
    image_id: str = ""


@dataclass
class PodPlan:
    pod_dir: Path
    init_containers: list[ContainerPlan] = field(default_factory=list)
    containers: list[ContainerPlan] = field(default_factory=list)


_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: defined names expand, ``$$`` escapes, unknown stay."""

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _VAR.sub(sub, value)


class PathMapper:
    """Rewrite container paths to host paths in one pass, longest mount first.

    One pass matters: a host path produced for one mount must never be
    rewritten again by another (a PVC that lives under the host's /tmp is
    not the container's /tmp emptyDir).
    """

    def __init__(self, mounts: dict[str, Path]) -> None:
        ordered = sorted(mounts.items(), key=lambda kv: -len(kv[0]))
        self.hosts = {cpath.rstrip("/") or "/": str(hpath) for cpath, hpath in ordered}
        alternatives = "|".join(re.escape(c) for c in self.hosts)
        self._pattern = (
            re.compile(r"(?:(?<=^)|(?<=[=:\s,]))(" + alternatives + r")(?=/|$|[\s:,])")
            if self.hosts
            else None
        )

    def __call__(self, value: str) -> str:
        if self._pattern is None:
            return value
        return self._pattern.sub(lambda m: self.hosts[m.group(1)], value)


def _decode(obj: dict[str, Any], key: str, kind: str) -> str | None:
    if kind == "Secret":
        data = (obj.get("data") or {}).get(key)
        return base64.b64decode(data).decode() if data is not None else None
    return (obj.get("data") or {}).get(key)


def field_ref(pod: dict[str, Any], path: str) -> str:
    meta = pod["metadata"]
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": pod["spec"].get("nodeName", ""),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
        "status.hostIP": "127.0.0.1",
        "status.podIP": "127.0.0.1",
        "status.podIPs": "127.0.0.1",
        "status.hostIPs": "127.0.0.1",
    }
    if path in simple:
        return simple[path]
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if match:
        return (meta.get(match.group(1)) or {}).get(match.group(2), "")
    raise ContainerConfigError(f"unsupported fieldRef fieldPath {path!r}")


def resource_ref(container: dict[str, Any], ref: dict[str, Any], node_alloc: dict[str, str]) -> str:
    kind, _, name = ref["resource"].partition(".")
    res = (container.get("resources") or {}).get(kind) or {}
    raw = (
        res.get(name)
        or (res.get(name) if kind == "requests" else None)
        or node_alloc.get(name, "0")
    )
    value = parse_quantity(raw) / parse_quantity(ref.get("divisor", "1"))
    return str(int(value.to_integral_value(rounding=ROUND_CEILING)))


def _key_value(
    lookup: Lookup, kind: str, namespace: str, ref: dict[str, Any], what: str
) -> str | None:
    obj = lookup(kind, namespace, ref["name"])
    optional = bool(ref.get("optional"))
    if obj is None:
        if optional:
            return None
        raise ContainerConfigError(f'{kind.lower()} "{ref["name"]}" not found ({what})')
    value = _decode(obj, ref["key"], kind)
    if value is None and not optional:
        raise ContainerConfigError(
            f"couldn't find key {ref['key']} in {kind} {namespace}/{ref['name']} ({what})"
        )
    return value


def resolve_env(
    pod: dict[str, Any],
    container: dict[str, Any],
    lookup: Lookup,
    node_alloc: dict[str, str],
) -> dict[str, str]:
    """envFrom first, then env in order (later entries may reference earlier ones)."""
    namespace = pod["metadata"]["namespace"]
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            ref = source.get(key)
            if not ref:
                continue
            obj = lookup(kind, namespace, ref["name"])
            if obj is None:
                if ref.get("optional"):
                    continue
                raise ContainerConfigError(f'{kind.lower()} "{ref["name"]}" not found (envFrom)')
            for data_key in obj.get("data") or {}:
                value = _decode(obj, data_key, kind)
                if value is not None:
                    env[prefix + data_key] = value
    for item in container.get("env") or []:
        name = item["name"]
        if "value" in item:
            env[name] = expand(item["value"], env)
            continue
        source = item.get("valueFrom")
        if not source:
            env[name] = ""
            continue
        value: str | None
        if "secretKeyRef" in source:
            value = _key_value(lookup, "Secret", namespace, source["secretKeyRef"], f"env {name}")
        elif "configMapKeyRef" in source:
            value = _key_value(
                lookup, "ConfigMap", namespace, source["configMapKeyRef"], f"env {name}"
            )
        elif "fieldRef" in source:
            value = field_ref(pod, source["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in source:
            value = resource_ref(container, source["resourceFieldRef"], node_alloc)
        else:
            raise ContainerConfigError(f"env {name}: unsupported valueFrom {sorted(source)}")
        if value is not None:
            env[name] = value
    return env


def _write_items(
    target: Path,
    data: dict[str, str],
    items: list[dict[str, Any]] | None,
    default_mode: int | None = None,
) -> None:
    target.mkdir(parents=True, exist_ok=True)
    chosen = {i["key"]: i.get("path", i["key"]) for i in items} if items else {k: k for k in data}
    modes = {i["key"]: i["mode"] for i in items or [] if "mode" in i}
    for key, rel in chosen.items():
        if key not in data:
            raise ContainerConfigError(f"key {key} not found for volume item {rel}")
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(data[key])
        # The API's defaultMode is 0644: a non-root container user must be able to read it.
        dest.chmod(int(modes.get(key, 0o644 if default_mode is None else default_mode)))


def apply_fs_group(path: Path, gid: int) -> None:
    """What the kubelet does for ``fsGroup``: the volume's files belong to the group, which
    may read and write them; directories are setgid so new files inherit the group."""
    for dirpath, _dirnames, filenames in os.walk(path):
        os.chown(dirpath, -1, gid)
        os.chmod(dirpath, os.stat(dirpath).st_mode | stat.S_IRWXG | stat.S_ISGID)  # noqa: S103
        for name in filenames:
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                continue
            os.chown(full, -1, gid)
            os.chmod(full, os.stat(full).st_mode | stat.S_IRGRP | stat.S_IWGRP)


def _object_data(obj: dict[str, Any], kind: str) -> dict[str, str]:
    return {k: _decode(obj, k, kind) or "" for k in (obj.get("data") or {})}


def materialize_volumes(
    pod: dict[str, Any],
    pod_dir: Path,
    config: KubeletConfig,
    lookup: Lookup,
    token: TokenSource | None,
) -> dict[str, Path]:
    """Create each volume's directory and fill it; returns volume name -> host dir."""
    namespace = pod["metadata"]["namespace"]
    dirs: dict[str, Path] = {}
    for volume in pod["spec"].get("volumes") or []:
        name = volume["name"]
        target = pod_dir / "volumes" / name
        if "emptyDir" in volume:
            target.mkdir(parents=True, exist_ok=True)
            target.chmod(0o777)  # as the kubelet makes it: any container user writes
        elif "secret" in volume or "configMap" in volume:
            kind = "Secret" if "secret" in volume else "ConfigMap"
            src = volume["secret"] if kind == "Secret" else volume["configMap"]
            obj_name = src.get("secretName") or src.get("name")
            obj = lookup(kind, namespace, obj_name)
            if obj is None:
                if not src.get("optional"):
                    raise ContainerConfigError(
                        f'{kind.lower()} "{obj_name}" not found (volume {name})'
                    )
                target.mkdir(parents=True, exist_ok=True)
            else:
                _write_items(
                    target, _object_data(obj, kind), src.get("items"), src.get("defaultMode")
                )
        elif "persistentVolumeClaim" in volume:
            target = config.pvc_dir(namespace, volume["persistentVolumeClaim"]["claimName"])
            if not target.exists():
                target.mkdir(parents=True)
                target.chmod(0o777)  # as a local-path provisioner does
        elif "hostPath" in volume:
            mapped = config.map_host_path(volume["hostPath"]["path"])
            if mapped is None:
                raise ContainerConfigError(
                    f"hostPath {volume['hostPath']['path']} (volume {name}) is not in the "
                    "process kubelet's hostPath mapping"
                )
            target = Path(mapped)
            target.mkdir(parents=True, exist_ok=True)
        elif "projected" in volume:
            target.mkdir(parents=True, exist_ok=True)
            for source in volume["projected"].get("sources") or []:
                if "serviceAccountToken" in source and token is not None:
                    sat = source["serviceAccountToken"]
                    dest = target / sat["path"]
                    dest.write_text(
                        token(pod, sat.get("audience"), int(sat.get("expirationSeconds", 3600)))
                    )
                    dest.chmod(int(volume["projected"].get("defaultMode", 0o644)))
                elif "configMap" in source or "secret" in source:
                    kind = "Secret" if "secret" in source else "ConfigMap"
                    src = source["secret"] if kind == "Secret" else source["configMap"]
                    obj = lookup(kind, namespace, src["name"])
                    if obj is not None:
                        _write_items(
                            target,
                            _object_data(obj, kind),
                            src.get("items"),
                            volume["projected"].get("defaultMode"),
                        )
                    elif not src.get("optional"):
                        raise ContainerConfigError(f'{kind.lower()} "{src["name"]}" not found')
                elif "downwardAPI" in source:
                    for item in source["downwardAPI"].get("items") or []:
                        if "fieldRef" in item:
                            (target / item["path"]).write_text(
                                field_ref(pod, item["fieldRef"]["fieldPath"])
                            )
        else:
            kinds = sorted(k for k in volume if k != "name")
            raise ContainerConfigError(f"volume {name}: unsupported volume type {kinds}")
        fs_group = (pod["spec"].get("securityContext") or {}).get("fsGroup")
        if fs_group is not None and "hostPath" not in volume:  # hostPath: never, as upstream
            apply_fs_group(target, int(fs_group))
        dirs[name] = target
    return dirs


def plan_container(
    pod: dict[str, Any],
    container: dict[str, Any],
    *,
    pod_dir: Path,
    volumes: dict[str, Path],
    config: KubeletConfig,
    lookup: Lookup,
    node_alloc: dict[str, str],
    service_env: dict[str, str],
) -> ContainerPlan:
    """Everything needed to start one container as a process."""
    runtime = config.resolve_image(container["image"])
    if runtime is None:
        known = ", ".join(sorted(config.images))
        raise ImageNotMapped(
            f'image "{container["image"]}" has no local runtime on this process kubelet '
            f"(mapped image patterns: {known})"
        )
    name = container["name"]
    term_container = container.get("terminationMessagePath") or "/dev/termination-log"
    term_host = pod_dir / "termination" / name
    term_host.parent.mkdir(parents=True, exist_ok=True)
    # Never truncate: a restarted agent re-plans adopted containers, whose message may be written.
    term_host.touch(exist_ok=True)
    mounts: dict[str, Path] = {term_container: term_host}
    for mount in container.get("volumeMounts") or []:
        base = volumes.get(mount["name"])
        if base is None:
            raise ContainerConfigError(f"volumeMount {mount['name']}: no such volume in the Pod")
        mounts[mount["mountPath"]] = base / mount["subPath"] if mount.get("subPath") else base
    mapper = PathMapper(mounts)

    env = {
        "PATH": ":".join(runtime.path),
        "HOME": str(pod_dir / "home"),
        "HOSTNAME": pod["metadata"]["name"],
        "LANG": "C.UTF-8",
        **dict(runtime.env),
        **service_env,
    }
    (pod_dir / "home").mkdir(parents=True, exist_ok=True)
    container_env = resolve_env(pod, container, lookup, node_alloc)
    env.update({k: mapper(v) for k, v in container_env.items()})

    command = [expand(c, container_env) for c in container.get("command") or []]
    args = [expand(a, container_env) for a in container.get("args") or []]
    argv = command or list(runtime.entrypoint)
    argv = [mapper(a) for a in [*argv, *args]]
    if not argv:
        raise ImageNotMapped(f'image "{container["image"]}" has no entrypoint and no command')
    exe = which_in(argv[0], runtime.path)
    if exe is None:
        raise ContainerConfigError(
            f'executable "{argv[0]}" not found in image {container["image"]} '
            f"(PATH {':'.join(runtime.path)})"
        )
    argv[0] = exe

    working = container.get("workingDir")
    cwd = Path(mapper(working)) if working else pod_dir / "rootfs"
    if working and not str(cwd).startswith(str(pod_dir)) and mapper(working) == working:
        cwd = pod_dir / "rootfs" / working.lstrip("/")
    cwd.mkdir(parents=True, exist_ok=True)
    return ContainerPlan(
        name=name,
        argv=argv,
        env=env,
        cwd=cwd,
        log_path=pod_dir / "logs" / f"{name}.log",
        termination_path=term_host,
        termination_policy=container.get("terminationMessagePolicy", "File"),
        image=container["image"],
        spec=container,
    )


def pod_dir_for(root: Path, pod: dict[str, Any]) -> Path:
    meta = pod["metadata"]
    return root / "pods" / f"{meta['namespace']}_{meta['name']}_{meta['uid']}"


def service_env(api_port: int | None) -> dict[str, str]:
    """What the real kubelet injects so in-cluster clients find the apiserver."""
    if api_port is None:
        return {}
    return {
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": str(api_port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(api_port),
    }
