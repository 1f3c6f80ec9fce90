"""A tiny real image for the kubelet's tests: Debian's static busybox, pushed to the registry.

Built by hand as an OCI image layout (one gzip layer, a config, a manifest) and
copied to the registry with skopeo, so no container engine or build storage is
involved. The tag is a hash of the layer, so a warm run finds the image already
in the registry's persistent storage and the push is a no-op.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
REPOSITORY = "editflow-test/busybox"

PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:10001:10001:app:/home/app:/bin/sh\n"
GROUP = "root:x:0:\napp:x:10001:\n"


def _layer() -> bytes:
    """An uncompressed tar: busybox, a symlink per applet, passwd/group, /tmp and /root."""
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add(
            name: str,
            *,
            kind: bytes = tarfile.DIRTYPE,
            mode: int = 0o755,
            data: bytes = b"",
            link: str = "",
        ) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = kind, mode, 0
            info.linkname = link
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        for directory in ("bin", "etc", "root", "home"):
            add(directory)
        add("tmp", mode=0o1777)
        add("bin/busybox", kind=tarfile.REGTYPE, data=BUSYBOX.read_bytes())
        for applet in sorted(set(applets) - {"busybox"}):
            add(f"bin/{applet}", kind=tarfile.SYMTYPE, link="busybox")
        add("etc/passwd", kind=tarfile.REGTYPE, mode=0o644, data=PASSWD.encode())
        add("etc/group", kind=tarfile.REGTYPE, mode=0o644, data=GROUP.encode())
    return buf.getvalue()


def _write_blob(layout: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    blob = layout / "blobs" / "sha256" / digest
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def build_layout(layout: Path, tag: str, *, user: str = "") -> None:
    """An OCI image layout at ``layout`` holding the busybox image as ``tag``."""
    raw = _layer()
    compressed = gzip.compress(raw, mtime=0)
    shutil.rmtree(layout, ignore_errors=True)
    layout.mkdir(parents=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    layer = _write_blob(layout, compressed)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], "User": user, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(raw).hexdigest()}"]},
    }
    config_blob = _write_blob(layout, json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_blob},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer}],
    }
    manifest_blob = _write_blob(layout, json.dumps(manifest).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **manifest_blob,
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))


def push_busybox(registry: str, workdir: Path, *, user: str = "") -> str:
    """Build and push the image; returns its reference ``registry/editflow-test/busybox:TAG``."""
    tag = hashlib.sha256(BUSYBOX.read_bytes() + PASSWD.encode() + user.encode()).hexdigest()[:12]
    layout = workdir / f"busybox-{tag}"
    build_layout(layout, tag, user=user)
    reference = f"{registry}/{REPOSITORY}:{tag}"
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            f"oci:{layout}:{tag}",
            f"docker://{reference}",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return reference
