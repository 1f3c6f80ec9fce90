"""``editflow dev``: install, start, inspect and stop the embedded local platform."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from editflow.cli.images import images as images_command
from editflow.devstack import installer, paths
from editflow.devstack.components import Health

if TYPE_CHECKING:
    from editflow.devstack.stack import LocalStack

app = typer.Typer(help="The embedded local platform (kube-apiserver, etcd, NATS, MinIO).")
# Wide enough for the tables when output goes to a CI log rather than a terminal.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 140)


@app.command()
def install(
    force: bool = typer.Option(False, help="rebuild even when the cached binaries are fresh"),
    only: list[str] = typer.Option(None, help="build only these steps (repeatable)"),
) -> None:
    """Build or verify every pinned platform binary (cached under ~/.cache/editflow)."""
    began = time.monotonic()
    tasks: dict[str, int] = {}
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description:<12}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} packages"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        quarters: dict[str, int] = {}

        def on_progress(step: str, done: int, total: int) -> None:
            if step not in tasks:
                tasks[step] = progress.add_task(step, total=total)
            progress.update(tasks[step], completed=done, total=total)
            if not console.is_terminal:
                # CI logs get no live bar: a line per quarter shows the build is moving.
                quarter = 4 * done // max(total, 1)
                if quarter > quarters.get(step, -1):
                    quarters[step] = quarter
                    console.print(f"building {step}: {done}/{total} packages")

        try:
            results = installer.install_all(
                force=force, only=set(only) if only else None, progress=on_progress
            )
        except installer.InstallError as exc:
            console.print(f"[red]install failed:[/red] {exc}")
            raise typer.Exit(1) from None
    table = Table(title=f"platform binaries in {paths.platform_bin_dir()}")
    for col in ("step", "binary", "version", "sha256", "seconds", "state"):
        table.add_column(col)
    for res in results:
        for rec in res.binaries:
            table.add_row(
                res.step,
                rec.name,
                rec.version,
                rec.sha256[:16],
                f"{res.seconds:.1f}",
                "cached" if res.cached else "built",
            )
    console.print(table)
    console.print(f"total {time.monotonic() - began:.1f}s")


def health_table(rows: list[Health], title: str) -> Table:
    table = Table(title=title)
    for col in ("component", "endpoint", "version", "healthy", "detail"):
        table.add_column(col)
    for row in rows:
        table.add_row(
            row.component,
            row.endpoint,
            row.version,
            "[green]yes[/green]" if row.healthy else "[red]no[/red]",
            row.detail,
        )
    return table


@app.command()
def check() -> None:
    """Start the whole local stack, print a health table, and stop it again."""
    from editflow.devstack.stack import LocalStack

    began = time.monotonic()
    with console.status("starting etcd, kube-apiserver, kube-controller-manager, NATS, MinIO"):
        stack = LocalStack(host_images=True).start()
    try:
        rows = stack.health()
        console.print(health_table(rows, f"local stack up in {time.monotonic() - began:.1f}s"))
    finally:
        with console.status("stopping"):
            stack.stop()
    if not all(r.healthy for r in rows):
        raise typer.Exit(1)
    console.print("[green]all components healthy; stack stopped, nothing left running[/green]")


def _state_file() -> Path:
    return paths.dev_state_dir() / "endpoints.json"


def _pid_file() -> Path:
    return paths.dev_state_dir() / "supervisor.pid"


HOST_IMAGES_HELP = (
    "run the operator and gateway as host processes and workers as host commands, "
    "instead of `helm install` with editflow's images (no image build)"
)


class _ChartEditflow:
    """editflow as ``helm install`` of the chart with its images, the gateway forwarded."""

    def __init__(self, stack: LocalStack, models: Path | None, *, push: bool) -> None:
        from editflow.devstack import release

        built = release.publish_images(console, push=push)
        self.release = release.install(stack, built, models_dir=models)
        self.release.wait_ready("operator")
        self.gateway = release.forward_gateway(self.release)

    def stop(self) -> None:
        self.gateway.close()


@app.command()
def serve(
    workdir: Path = typer.Option(None, help="where the stack keeps its data"),
    editflow: bool = typer.Option(True, help="also run editflow: operator, gateway, try-it page"),
    host_images: bool = typer.Option(False, help=HOST_IMAGES_HELP),
    images_pushed: bool = typer.Option(
        False, hidden=True, help="`dev up` pushed the images already: only check their hash"
    ),
) -> None:
    """Run the stack in the foreground until SIGTERM/Ctrl-C (``dev up`` runs this detached)."""
    from editflow.devstack import localmode
    from editflow.devstack.stack import LocalStack

    state = paths.dev_state_dir()
    state.mkdir(parents=True, exist_ok=True)
    workdir = workdir or state / "stack"
    # Every `dev up` is a fresh cluster: a new CA, empty etcd, no Pods of an earlier run.
    shutil.rmtree(workdir, ignore_errors=True)
    images_mode = editflow and not host_images
    stack = LocalStack(
        workdir, keep_workdir=True, host_images=not images_mode, registry=images_mode
    )
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stack.start()
    running = None
    try:
        endpoints = stack.endpoints()
        if editflow:
            env_models = os.environ.get("EDITFLOW_DEMO_MODELS_DIR")
            models = Path(env_models) if env_models else None
            if images_mode:
                chart = _ChartEditflow(stack, models, push=not images_pushed)
                running = chart
                gateway = {"url": chart.gateway.url, "token": chart.gateway.token}
                endpoints["release"] = chart.release.name
                endpoints["mode"] = "images"
                # The platform's NATS now has the chart's users: the host is the OA system.
                publisher = chart.release.nats_settings("publisher")
                endpoints["nats"] = {
                    "url": publisher.url,
                    "user": publisher.user,
                    "password": publisher.password.get_secret_value()
                    if publisher.password
                    else None,
                }
            else:
                local = localmode.start_editflow(stack, models_dir_override=models)
                running = local
                gateway = {"url": local.gateway.url, "token": local.gateway.token}
                endpoints["mode"] = "host"
            endpoints["gateway"] = gateway
            endpoints["namespace"] = localmode.NAMESPACE
        (state / "kubeconfig").write_bytes(stack.kubeconfig.read_bytes())
        (state / "kubeconfig").chmod(0o600)
        # Written last and atomically: `dev up` takes its appearance as "ready".
        pending = _state_file().with_suffix(".tmp")
        pending.write_text(json.dumps(endpoints, indent=2))
        pending.chmod(0o600)
        pending.replace(_state_file())
        while not stopping:
            time.sleep(0.5)
    finally:
        if running is not None:
            running.stop()
        stack.stop()
        _state_file().unlink(missing_ok=True)


@app.command()
def up(
    timeout: float = typer.Option(300, help="seconds to wait for the stack (after the images)"),
    editflow: bool = typer.Option(True, help="also run editflow: operator, gateway, try-it page"),
    host_images: bool = typer.Option(False, help=HOST_IMAGES_HELP),
) -> None:
    """Start the local stack in the background; kubeconfig and endpoints go to the state dir.

    editflow runs from its images: they are built here first (``make images``, cached by
    content hash: the first build takes minutes, later ones seconds), then the background
    stack installs the chart with them.
    """
    state = paths.dev_state_dir()
    state.mkdir(parents=True, exist_ok=True)
    if _pid_file().exists() and _alive(int(_pid_file().read_text())):
        console.print(
            f"already running (pid {_pid_file().read_text().strip()}); see {_state_file()}"
        )
        return
    if editflow and not host_images:
        from editflow.devstack.release import images_unavailable

        why_not = images_unavailable()
        if why_not:
            console.print(f"[yellow]editflow runs as host processes here: {why_not}[/yellow]")
            host_images = True
        else:
            from editflow.devstack.release import publish_images

            publish_images(console)  # in the foreground, where a person sees the progress
    _state_file().unlink(missing_ok=True)
    log = (state / "supervisor.log").open("ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "editflow.cli.main",
            "dev",
            "serve",
            "--editflow" if editflow else "--no-editflow",
            *(["--host-images"] if host_images else ["--images-pushed"] if editflow else []),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    _pid_file().write_text(str(proc.pid))
    deadline = time.monotonic() + timeout
    with console.status("starting the local stack"):
        while not _state_file().exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                console.print(f"[red]the stack did not start[/red]; see {state / 'supervisor.log'}")
                raise typer.Exit(1)
            time.sleep(0.3)
    data = json.loads(_state_file().read_text())
    console.print(health_table([Health(**h) for h in data["health"]], "local stack is up"))
    console.print(f"export KUBECONFIG={state / 'kubeconfig'}")
    if "gateway" in data:
        how = (
            f"helm release {data['release']} from editflow's images"
            if data.get("mode") == "images"
            else "host processes"
        )
        console.print(f"editflow: {how}")
        console.print(f"try-it page: {data['gateway']['url']}/  (token in {_state_file()})")
        console.print(f"EditJobs live in namespace {data['namespace']}")
    if "nats" in data:
        console.print(
            f"NATS has the chart's per-role users: publish approvals as {data['nats']['user']} "
            f"(EDITFLOW_NATS__USER / EDITFLOW_NATS__PASSWORD; the password is in {_state_file()})"
        )
    console.print(f"endpoints: {_state_file()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@app.command()
def down(timeout: float = typer.Option(60, help="seconds to wait for a clean stop")) -> None:
    """Stop the stack started by ``editflow dev up``."""
    if not _pid_file().exists():
        console.print("no local stack is running")
        return
    pid = int(_pid_file().read_text())
    if _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
    _pid_file().unlink(missing_ok=True)
    console.print("local stack stopped")


@app.command()
def kubelet(
    kubeconfig: Path = typer.Option(..., help="kubeconfig of the node identity"),
    root: Path = typer.Option(..., help="where pod directories, logs and volumes live"),
    port: int = typer.Option(10250, help="HTTPS port for /healthz and kubectl logs"),
    cert: Path = typer.Option(..., help="serving certificate"),
    key: Path = typer.Option(..., help="serving key"),
    client_ca: Path = typer.Option(..., help="CA that signs the apiserver's client certificate"),
    node_name: str = typer.Option("editflow-local-node", help="Node name to register"),
    gpus: int = typer.Option(1, help="nvidia.com/gpu capacity to advertise"),
    config_file: Path = typer.Option(None, help="JSON overrides (images, pvc_root, host_paths)"),
    host_images: bool = typer.Option(
        False, help="map editflow's images to host commands instead of pulling and running them"
    ),
    default_registry: str = typer.Option(
        None, help="registry (HOST:PORT) that unqualified image names are pulled from"
    ),
    image_store: Path = typer.Option(
        None, help="where pulled images are kept (default: ~/.cache/editflow/kubelet/images)"
    ),
) -> None:
    """Run the process kubelet: Pods bound to this node run as local processes."""
    from editflow.core.logging import configure_logging
    from editflow.devstack.kubelet.config import KubeletConfig
    from editflow.devstack.kubelet.main import run

    configure_logging()
    config = KubeletConfig.from_file(config_file, root) if config_file else KubeletConfig(root=root)
    config.node_name = node_name
    config.gpus = gpus
    config.host_images = host_images or config.host_images
    config.default_registry = default_registry or config.default_registry
    config.image_store = image_store or config.image_store
    run(kubeconfig=kubeconfig, config=config, port=port, cert=cert, key=key, client_ca=client_ca)


@app.command()
def logs(
    pod: str = typer.Argument(..., help="pod name"),
    namespace: str = typer.Option("default", "-n", "--namespace"),
    container: str = typer.Option(None, "-c", "--container"),
) -> None:
    """Print a local-mode pod's container log (what ``kubectl logs`` shows)."""
    root = paths.dev_state_dir() / "stack" / "kubelet"
    matches = sorted(root.glob(f"pods/{namespace}_{pod}_*/logs/{container or '*'}.log"))
    if not matches:
        console.print(f"no logs for pod {namespace}/{pod} under {root}")
        raise typer.Exit(1)
    for match in matches:
        sys.stdout.write(match.read_text(errors="replace"))


@app.command()
def status() -> None:
    """Show whether ``dev up`` is running and where its endpoints are."""
    if _pid_file().exists() and _alive(int(_pid_file().read_text())) and _state_file().exists():
        data = json.loads(_state_file().read_text())
        console.print(health_table([Health(**h) for h in data["health"]], "local stack (at start)"))
        console.print(f"export KUBECONFIG={paths.dev_state_dir() / 'kubeconfig'}")
    else:
        console.print("no local stack is running")
        raise typer.Exit(1)


# `editflow dev images` (make images) lives in its own module: editflow.cli.images.
app.command(name="images")(images_command)
