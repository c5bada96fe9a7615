"""Research notebooks as reports: execute with papermill, export HTML with nbconvert, extract the figures.

`run_notebook(path, out_dir, parameters)` writes `out_dir/<name>/` = {<name>.ipynb (executed), <name>.html
(self-contained), figures/*.png (every PNG the notebook displayed)}. Everything is written into a
temporary sibling folder and swapped in by rename, so a reader never sees half a report; a failed run keeps
the last good report and leaves its executed copy in `out_dir/.<name>.failed/` for debugging.

The kernel is always this interpreter (the project's virtualenv), whatever kernelspecs the user has installed.
"""

from __future__ import annotations

import base64
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.files import publish_mode, swap_in
from pipelines.settings import REPO_ROOT, Settings

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = ("retrieval", "benchmarks", "utility", "router")


class NotebookError(RuntimeError):
    """A cell of the notebook raised: the notebook's own error, and where its executed copy lies."""

    def __init__(self, name: str, message: str, executed: Path | None = None) -> None:
        super().__init__(
            f"notebook {name}: {message}" + (f" (executed copy: {executed})" if executed else "")
        )
        self.name, self.message, self.executed = name, message, executed


class MissingAsset(FileNotFoundError):
    """A notebook needs an asset that has not been materialized in this run folder."""


def require_asset(path: str | Path, asset: str) -> Path:
    """`path` if it exists; else a MissingAsset error that names the asset to materialize."""
    path = Path(path)
    if not path.exists():
        raise MissingAsset(
            f"{path} not found: materialize {asset} first "
            f"(`dagster asset materialize -m assets --select {asset}`, or `make demo`)"
        )
    return path


@dataclass
class Report:
    name: str
    notebook: Path
    html: Path
    figures: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    parameters: dict[str, Any] = field(default_factory=dict)


def kernel_manager_class(env: dict[str, str] | None = None) -> type:
    """A KernelManager that starts ipykernel on `sys.executable`, not on whatever `python3` resolves to, with
    `env` added to this process's environment (the caller's settings as SM_* variables)."""
    from jupyter_client.manager import KernelManager
    from traitlets import default

    class ThisInterpreterKernelManager(KernelManager):
        async def _async_pre_start_kernel(self, **kw: Any) -> Any:
            if env:
                kw["env"] = {**kw.get("env", os.environ), **env}
            return await super()._async_pre_start_kernel(**kw)

        # over Unix sockets, not TCP ports: kernels started at the same moment cannot race for a port, and
        # nothing listens on the network
        @default("transport")
        def _transport_default(self) -> str:
            return "ipc"

        @default("ip")
        def _ip_default(self) -> str:
            """The sockets' path prefix: one per kernel, and short (a socket's path is under 108 bytes)."""
            return os.path.join(tempfile.gettempdir(), f"sm-kernel-{uuid.uuid4().hex[:12]}")

        def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
            return [sys.executable, "-m", "ipykernel_launcher", "-f", self.connection_file,
                    *(extra_arguments or [])]  # fmt: skip

    return ThisInterpreterKernelManager


def extract_figures(nb: Any, folder: Path, prefix: str) -> list[Path]:
    """Write every image/png output of `nb` (display_data or execute_result) as folder/<prefix>-CC-N.png."""
    paths = []
    for ci, cell in enumerate(nb.cells):
        n = 0
        for out in cell.get("outputs", []):
            if out.get("output_type") in ("display_data", "execute_result") and "image/png" in out.get(
                "data", {}
            ):
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / f"{prefix}-{ci:02d}-{n}.png"
                path.write_bytes(base64.b64decode(out["data"]["image/png"]))
                paths.append(path)
                n += 1
    return paths


def export_html(nb: Any, path: Path) -> Path:
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nb)
    path.write_text(body, encoding="utf-8")
    return path


def run_notebook(
    path: str | Path,
    out_dir: str | Path,
    parameters: dict[str, Any] | None = None,
    timeout_s: float | None = 1800,
    cwd: str | Path | None = None,
    env: dict[str, str] | None = None,
) -> Report:
    """Execute the notebook at `path` with `parameters` (papermill) in a kernel whose environment has `env`
    added (`Settings.as_env()`: a notebook's `Settings()` is then the caller's), then write its report
    atomically."""
    import nbformat
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    path, out_dir = Path(path), Path(out_dir)
    name = path.stem
    parameters = dict(parameters or {})
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".{name}.tmp-"))
    publish_mode(tmp)
    executed = tmp / f"{name}.ipynb"
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(
            str(path), str(executed), parameters=parameters, kernel_name="python3", language="python",
            cwd=str(cwd or path.parent), progress_bar=False, execution_timeout=timeout_s,
            kernel_manager_class=kernel_manager_class(env),
        )  # fmt: skip
    except PapermillExecutionError as e:
        failed = out_dir / f".{name}.failed"
        shutil.rmtree(failed, ignore_errors=True)
        if executed.exists():
            export_html(nbformat.read(executed, as_version=4), tmp / f"{name}.html")
        os.replace(tmp, failed)
        msg = f"cell {e.exec_count} raised {e.ename}: {e.evalue}"
        raise NotebookError(name, msg, failed / f"{name}.ipynb") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.perf_counter() - t0
    try:
        nb = nbformat.read(executed, as_version=4)
        export_html(nb, tmp / f"{name}.html")
        extract_figures(nb, tmp / "figures", name)
        final = out_dir / name
        swap_in(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Report(
        name=name,
        notebook=final / f"{name}.ipynb",
        html=final / f"{name}.html",
        figures=sorted((final / "figures").glob("*.png")),
        seconds=seconds,
        parameters=parameters,
    )


def report_parameters(settings: Settings) -> dict[str, dict[str, Any]]:
    """Each notebook's papermill parameters for the run folder of `settings`."""
    params: dict[str, dict[str, Any]] = {n: {"run_dir": str(settings.run_dir)} for n in NOTEBOOKS}
    params["router"]["shared_data_dir"] = str(settings.shared_data_dir)
    return params


def run_notebooks(
    out_dir: str | Path,
    parameters: dict[str, dict[str, Any]],
    notebooks_dir: str | Path = NOTEBOOKS_DIR,
    names: tuple[str, ...] = NOTEBOOKS,
    workers: int = 2,
    env: dict[str, str] | None = None,
) -> list[Report]:
    """Run each named notebook (parameters per name), `workers` at a time, each in its own kernel; every
    notebook runs, then the first failure raises. Reports come back in the order of `names`.

    A kernel spends most of a report's time on one core (imports, pandas, plotting): on 2 cores, two at a
    time took the four reports in 86 s against 130 s one at a time (ratio 0.66, benchmarks/reports.py)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(n: str) -> Report | NotebookError:
        try:
            return run_notebook(Path(notebooks_dir) / f"{n}.ipynb", out_dir, parameters.get(n, {}), env=env)
        except NotebookError as e:
            return e

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="notebook") as pool:
        ran = list(pool.map(one, names))
    errors = [r for r in ran if isinstance(r, NotebookError)]
    if errors:
        if len(errors) == 1:
            raise errors[0]
        raise NotebookError(", ".join(e.name for e in errors), "; ".join(str(e) for e in errors))
    return [r for r in ran if isinstance(r, Report)]
