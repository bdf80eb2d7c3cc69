"""Start, join, attach to and tear down a TransferQueue deployment on Ray.

A *deployment* is TransferQueue's controller actor plus its storage (SimpleStorage unit actors, or a
``mooncake_master`` process for MooncakeStore). One process bootstraps it (``bootstrap=True``, the
driver); any number of processes attach to it (``bootstrap=False``, workers). An initialised Ray is
used as is, else ``ray_address`` is joined, else a bootstrapping process starts a local Ray
(``ray_num_cpus``, default ``max(4, 1 + num_storage_units)``) and an attaching one joins it
(``"auto"``). A bootstrap checks the free Ray CPUs first and is bounded by
``bootstrap_timeout_s``. Attaching never calls ``tq.init``, so closing an attached client only
detaches; an attached MooncakeStore client writes into the bootstrapping process's segment (size it
with ``global_segment_size``). Only the bootstrapping process tears down, and only the process that
started Ray shuts it down.

Design: docs/internals.md#kvplaneadapterstransfer_queue_deploymentpy--the-deployments-life-cycle

Examples:
    >>> from kvplane import DataPlaneConfig
    >>> from kvplane.adapters.transfer_queue._deployment import default_num_cpus, required_cpus, tq_conf
    >>> cfg = DataPlaneConfig.load({"impl": "transfer_queue", "backend": "simple", "storage_capacity": 1000,
    ...                             "num_storage_units": 2, "claim_meta_poll_interval_s": 0.05})
    >>> default_num_cpus(cfg), required_cpus(cfg)
    (4, 3)
    >>> tq_conf(cfg, node_ip="10.0.0.5")["backend"]["SimpleStorage"]
    {'total_storage_size': 1000, 'num_data_storage_units': 2}
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import transfer_queue as tq
from transfer_queue import TransferQueueClient
from transfer_queue import interface as tq_interface

from kvplane._config import DataPlaneConfig
from kvplane._errors import DataPlaneBadRequest, DataPlaneError, DataPlaneUnavailable

from . import _columnar as columnar
from ._calls import run_bounded, translate
from ._ports import unused_ports

__all__ = ["Deployment", "default_num_cpus", "open_deployment", "required_cpus", "tq_conf"]

logger = logging.getLogger(__name__)

CONTROLLER_NAME = "TransferQueueController"
NAMESPACE = "transfer_queue"
#: kvplane backend name → TransferQueue storage backend name.
STORAGE_BACKENDS = {"simple": "SimpleStorage", "mooncake_cpu": "MooncakeStore", "columnar": columnar.BACKEND}
#: TransferQueue names SimpleStorage unit ``rank`` so (in the bootstrapping process's Ray namespace).
STORAGE_UNIT_NAME = "TransferQueueStorageUnit#{rank}"
_STOP_TIMEOUT_S = 10.0
_CPU_WAIT_S = 5.0
_LISTING_TIMEOUT_S = 5.0


def default_num_cpus(cfg: DataPlaneConfig) -> int:
    """CPUs of a local Ray started by kvplane when ``ray_num_cpus`` is not set."""
    return max(4, 1 + (cfg.num_storage_units or 1))


def required_cpus(cfg: DataPlaneConfig) -> int:
    """Free Ray CPUs a bootstrap needs: the controller, plus one per SimpleStorage unit."""
    return 1 + ((cfg.num_storage_units or 1) if cfg.backend == "simple" else 0)


def tq_conf(cfg: DataPlaneConfig, *, node_ip: str) -> dict[str, Any]:
    """The TransferQueue config a bootstrap passes to ``tq.init`` (merged over TQ's defaults).

    Claims poll (``polling_mode``): TransferQueue's blocking fetch stalls the whole controller. A
    MooncakeStore master gets two ports free on ``node_ip`` now (:mod:`._ports`); attaching processes
    read them from the running controller's config.
    """
    backend = STORAGE_BACKENDS[cfg.backend]  # type: ignore[index]
    if cfg.backend == "simple":
        storage: dict[str, Any] = {
            "total_storage_size": cfg.storage_capacity,
            "num_data_storage_units": cfg.num_storage_units,
        }
    elif cfg.backend == "columnar":
        storage = {}
    else:
        metadata_port, master_port = unused_ports(node_ip, 2)
        storage = {
            "auto_init": True,
            "metadata_server": f"{node_ip}:{metadata_port}",
            "master_server_address": f"{node_ip}:{master_port}",
            "protocol": "tcp",
            "global_segment_size": cfg.global_segment_size,
            "local_buffer_size": cfg.local_buffer_size,
        }
    return {"controller": {"polling_mode": True}, "backend": {"storage_backend": backend, backend: storage}}


@dataclass
class Deployment:
    """This process's handle on a TransferQueue deployment.

    Attributes:
        client: The TransferQueue client this process uses.
        storage_backend: TransferQueue's storage backend name (``SimpleStorage``/``MooncakeStore``).
        bootstrapped: This process started the deployment and tears it down on close.
        owns_client: This handle created ``client`` (and closes it on detach).
        started_ray: This process started Ray (and shuts it down on close).
        mooncake_master: The ``mooncake_master`` TransferQueue started for this deployment.
    """

    client: TransferQueueClient
    storage_backend: str
    bootstrapped: bool
    owns_client: bool
    started_ray: bool
    mooncake_master: subprocess.Popen[Any] | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the TransferQueue client runs its requests on."""
        return self.client._loop

    def gone(self) -> str | None:
        """What of the deployment no longer runs, as a sentence; ``None`` while all of it runs.

        A dead actor's ZMQ endpoint never answers, so a request to it waits for its whole deadline;
        Ray knows at once: a killed or crashed actor drops out of its named-actor list (one request to
        Ray's GCS, bounded). Checked: the controller, each SimpleStorage unit, the columnar owners
        this process knows of, and the ``mooncake_master`` this process started.

        Raises:
            DataPlaneTimeout: Ray did not list its actors within a few seconds.
            Exception: What Ray raised (the caller decides what an unanswered check means).
        """
        listed = run_bounded(
            "listing Ray's named actors",
            lambda: ray.util.list_named_actors(all_namespaces=True),
            timeout_s=_LISTING_TIMEOUT_S,
        )
        missing = []
        if not any(a["name"] == CONTROLLER_NAME and a["namespace"] == NAMESPACE for a in listed):
            missing.append(f"controller actor {CONTROLLER_NAME}")
        if self.storage_backend == "SimpleStorage":
            names = {a["name"] for a in listed}
            manager = getattr(self.client, "storage_manager", None)
            units = [STORAGE_UNIT_NAME.format(rank=r) for r in range(len(manager.storage_unit_infos))]
            missing.extend(f"storage unit {unit}" for unit in units if unit not in names)
        elif self.storage_backend == columnar.BACKEND:
            manager = self.client.storage_manager
            alive = (a["name"] for a in listed if a["namespace"] == columnar.NAMESPACE)
            missing.extend(f"columnar owner {name}" for name in manager.owners_gone(alive))
        if self.mooncake_master is not None and self.mooncake_master.poll() is not None:
            missing.append(f"mooncake_master (pid {self.mooncake_master.pid})")
        if not missing:
            return None
        return f"TransferQueue's {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} gone"

    def close(self, timeout_s: float) -> None:
        """Tear down (bootstrapping process) or detach (any other); never raises."""
        mooncake_store = getattr(getattr(self.client, "storage_manager", None), "storage_client", None)
        if self.bootstrapped:
            columnar_owners = (tq_interface._TQ_STORAGE or {}).pop(columnar.BACKEND, None)
            _quietly("TransferQueue teardown", tq.close, timeout_s)
            if columnar_owners is not None:
                columnar.stop_owners()
        elif self.owns_client:
            _quietly("closing the TransferQueue client", self.client.close, timeout_s)
        if mooncake_store is not None and (self.bootstrapped or self.owns_client):
            # Unmount this process's segment while the master can still answer.
            _quietly("closing the MooncakeStore client", mooncake_store.close, timeout_s)
        if self.mooncake_master is not None:
            _stop_process(self.mooncake_master)
        if self.started_ray:
            _quietly("Ray shutdown", ray.shutdown, timeout_s)


def _quietly(what: str, fn: Any, timeout_s: float) -> None:
    try:
        run_bounded(what, fn, timeout_s=timeout_s)
    except Exception:  # close() must not raise; say what was left behind
        logger.warning("%s failed; resources may be left behind", what, exc_info=True)


def _stop_process(process: subprocess.Popen[Any]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(_STOP_TIMEOUT_S)
    logger.info("stopped mooncake_master (pid %d)", process.pid)


def open_deployment(cfg: DataPlaneConfig, *, bootstrap: bool) -> Deployment:
    """Bootstrap or attach to the deployment ``cfg`` describes (see the module docstring).

    Raises:
        DataPlaneUnavailable: Ray, the deployment, free CPUs or MooncakeStore are missing.
        DataPlaneTimeout: The bootstrap or attach did not finish within ``bootstrap_timeout_s``.
        DataPlaneBadRequest: The running deployment does not match ``cfg``.
    """
    if cfg.backend == "mooncake_cpu":
        _check_mooncake_importable()
    started_ray = _connect_ray(cfg, bootstrap=bootstrap)
    try:
        if bootstrap and not _controller_running():
            return _bootstrap(cfg, started_ray=started_ray)
        if bootstrap:
            logger.warning(
                "a TransferQueue deployment already runs in this Ray cluster; attaching to it "
                "(this process will not tear it down)"
            )
        return _attach(cfg, started_ray=started_ray)
    except BaseException as exc:
        if started_ray:
            _quietly("Ray shutdown", ray.shutdown, cfg.bootstrap_timeout_s)
        if isinstance(exc, Exception) and not isinstance(exc, DataPlaneError):
            raise translate("opening the TransferQueue deployment", exc, DataPlaneUnavailable) from exc
        raise


def _connect_ray(cfg: DataPlaneConfig, *, bootstrap: bool) -> bool:
    """Make sure this process is connected to Ray; True when it started a local Ray itself."""
    if ray.is_initialized():
        return False
    try:
        if cfg.ray_address or not bootstrap:
            ray.init(address=cfg.ray_address or "auto")
            return False
        num_cpus = cfg.ray_num_cpus or default_num_cpus(cfg)
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False)
        logger.info("started a local Ray with %d CPUs", num_cpus)
        return True
    except Exception as exc:
        where = cfg.ray_address or ("the local Ray cluster" if not bootstrap else "a local Ray")
        raise DataPlaneUnavailable(f"cannot connect to {where}: {type(exc).__name__}: {exc}") from exc


def _controller_running() -> bool:
    try:
        ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
    except ValueError:
        return False
    return True


def _check_mooncake_importable() -> None:
    try:
        import mooncake.store  # noqa: F401  (TransferQueue hides the real import error)
    except ImportError as exc:
        raise DataPlaneUnavailable(
            f"backend mooncake_cpu needs MooncakeStore, which does not import: {exc}. On a CPU-only host "
            "install mooncake-transfer-engine-non-cuda (pip) and libibverbs1 (apt)"
        ) from exc


def _put_mooncake_master_on_path() -> None:
    """TransferQueue spawns ``mooncake_master`` from PATH; find it next to this Python if needed."""
    if shutil.which("mooncake_master"):
        return
    import mooncake

    for folder in (Path(sys.executable).parent, Path(mooncake.__file__).parent):
        binary = folder / "mooncake_master"
        if binary.is_file() and os.access(binary, os.X_OK):
            os.environ["PATH"] = f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"
            logger.info("using %s (added its folder to PATH)", binary)
            return
    raise DataPlaneUnavailable(
        "backend mooncake_cpu needs the mooncake_master binary on PATH (it ships with "
        "mooncake-transfer-engine-non-cuda in the environment's bin/ folder)"
    )


def _free_cpus(need: int, within_s: float) -> float:
    """Free Ray CPUs, waiting up to ``within_s`` for ``need`` of them (a just-stopped actor's CPUs
    show up as free only after a moment)."""
    deadline = time.monotonic() + within_s
    while True:
        free = ray.available_resources().get("CPU", 0.0)
        if free >= need or time.monotonic() >= deadline:
            return free
        time.sleep(0.2)


def _bootstrap(cfg: DataPlaneConfig, *, started_ray: bool) -> Deployment:
    need = required_cpus(cfg)
    free = _free_cpus(need, within_s=min(_CPU_WAIT_S, cfg.bootstrap_timeout_s))
    if free < need:
        total = ray.cluster_resources().get("CPU", 0.0)
        units = f" + {cfg.num_storage_units} storage unit(s)" if cfg.backend == "simple" else ""
        raise DataPlaneUnavailable(
            f"TransferQueue needs {need} free Ray CPUs (1 controller{units}) but the Ray cluster has "
            f"{free:g} free of {total:g}; start Ray with more CPUs (ray_num_cpus) or use fewer storage units"
        )
    if cfg.backend == "mooncake_cpu":
        _put_mooncake_master_on_path()
    conf = tq_conf(cfg, node_ip=ray.util.get_node_ip_address())
    started = time.perf_counter()
    try:
        run_bounded("TransferQueue bootstrap", lambda: tq.init(conf), timeout_s=cfg.bootstrap_timeout_s)
    except BaseException as exc:
        master = _mooncake_master_process()
        _quietly("TransferQueue cleanup after a failed bootstrap", tq.close, _STOP_TIMEOUT_S)
        if master is not None:
            _stop_process(master)
        if isinstance(exc, DataPlaneError):
            raise
        raise translate("TransferQueue bootstrap", exc, DataPlaneUnavailable) from exc
    logger.info("TransferQueue (%s) bootstrapped in %.1fs", cfg.backend, time.perf_counter() - started)
    return Deployment(
        client=tq.get_client(),
        storage_backend=STORAGE_BACKENDS[cfg.backend],  # type: ignore[index]
        bootstrapped=True,
        owns_client=False,
        started_ray=started_ray,
        mooncake_master=_mooncake_master_process(),
    )


def _mooncake_master_process() -> subprocess.Popen[Any] | None:
    """The master TransferQueue's bootstrap spawned (TransferQueue keeps it in a module global)."""
    resources = (tq_interface._TQ_STORAGE or {}).get("MooncakeStore")
    if isinstance(resources, dict):
        resources = resources.get("master_process")
    return resources if isinstance(resources, subprocess.Popen) else None


def _attach(cfg: DataPlaneConfig, *, started_ray: bool) -> Deployment:
    try:
        controller = ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
    except ValueError as exc:
        raise DataPlaneUnavailable(
            "no TransferQueue deployment runs in this Ray cluster; build the driver's client with "
            "bootstrap=True first"
        ) from exc
    conf = _running_config(controller, cfg.bootstrap_timeout_s)
    backend = conf.backend.storage_backend
    if backend != STORAGE_BACKENDS[cfg.backend]:  # type: ignore[index]
        raise DataPlaneBadRequest(
            f"data plane config: 'backend' is {cfg.backend!r} but the running TransferQueue deployment "
            f"uses {backend}"
        )
    if not conf.controller.polling_mode:
        raise DataPlaneUnavailable(
            "the running TransferQueue deployment was started without controller.polling_mode; kvplane "
            "claims need it (a blocking fetch stalls the whole controller)"
        )
    in_process = tq_interface._TQ_CLIENT
    if in_process is not None:  # this process already holds TransferQueue's own client: share it
        return Deployment(in_process, backend, bootstrapped=False, owns_client=False, started_ray=started_ray)

    storage_conf = conf.backend[backend]
    if backend == "MooncakeStore":
        # Mount no segment: what a worker writes then lives in the bootstrapping process's segment
        # and survives the worker (data in a worker's own segment vanishes when it detaches).
        storage_conf = copy.deepcopy(storage_conf)
        storage_conf.global_segment_size = 0

    def connect() -> TransferQueueClient:
        client = TransferQueueClient(
            client_id=f"kvplane-{os.getpid()}-{uuid.uuid4().hex[:8]}",
            controller_info=conf.controller.zmq_info,
        )
        client.initialize_storage_manager(manager_type=backend, config=storage_conf)
        return client

    try:
        client = run_bounded("attaching to TransferQueue", connect, timeout_s=cfg.bootstrap_timeout_s)
    except DataPlaneError:
        raise
    except Exception as exc:
        raise translate("attaching to TransferQueue", exc, DataPlaneUnavailable) from exc
    return Deployment(client, backend, bootstrapped=False, owns_client=True, started_ray=started_ray)


def _running_config(controller: Any, timeout_s: float) -> Any:
    """The running controller's config (it is ``None`` until its bootstrap has finished)."""
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        try:
            conf = ray.get(controller.get_config.remote(), timeout=max(remaining, 0.001))
        except Exception as exc:
            raise translate("reading the TransferQueue config", exc, DataPlaneUnavailable) from exc
        if conf is not None:
            return conf
        if remaining <= 0:
            raise DataPlaneUnavailable(
                f"the TransferQueue deployment did not finish starting within {timeout_s:g}s"
            )
        time.sleep(min(0.2, remaining))
