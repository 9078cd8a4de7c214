"""The composition root: builds the repository, registry, batchers, executors and gRPC server,
wires them together, and runs the ordered start-up and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

from wattserve.batching.loop_load import LoopLoad, loop_kind
from wattserve.batching.scheduler import DynamicBatcher
from wattserve.core.dataplane import DataPlane
from wattserve.core.errors import ModelLoadError, WattserveError
from wattserve.core.observer import BatchObserver
from wattserve.core.registry import ModelRegistry, ServedModel
from wattserve.core.repository import ModelSource, Repository
from wattserve.core.statistics import ModelStatistics
from wattserve.demo import ensure_demo_repository
from wattserve.execution.onnx import OnnxRunner
from wattserve.grpc.server import HEALTH_SERVICE, build_server
from wattserve.metering.energy import EnergySettings
from wattserve.metering.meter import Meter, MeterConfig, Prices
from wattserve.metering.prometheus import MeterCollector, serve_metrics
from wattserve.protocol import SERVICE_NAME
from wattserve.settings import ServeSettings

logger = logging.getLogger(__name__)


async def build_model(
    source: ModelSource, observer: BatchObserver | None = None
) -> dict[int, ServedModel]:
    """Sessions (on a worker thread: loading blocks) and a batcher for every version."""
    models: dict[int, ServedModel] = {}
    for version, path in source.versions.items():
        runner = await asyncio.to_thread(
            OnnxRunner, path, source.config, model=source.name, version=version
        )
        statistics = ModelStatistics()
        batcher = DynamicBatcher(
            runner.run,
            model=source.name,
            version=str(version),
            instances=runner.instances,
            max_batch_size=runner.signature.max_batch_size,
            policy=source.config.dynamic_batching,
            statistics=statistics,
            observer=observer,
            loop_load=LoopLoad.of(asyncio.get_running_loop()),
            loop_rows=runner.loop_rows,
        )
        batcher.start()

        async def close(batcher: DynamicBatcher = batcher, runner: OnnxRunner = runner) -> None:
            await batcher.close()
            await asyncio.to_thread(runner.close)

        models[version] = ServedModel(
            name=source.name,
            version=version,
            source=source,
            signature=runner.signature,
            scheduler=batcher,
            instances=runner.instances,
            providers=runner.providers,
            close=close,
            statistics=statistics,
        )
    return models


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """This process is worker `index` of `count` sharing one port (wattserve.workers)."""

    index: int
    count: int


def meter_config(settings: ServeSettings, role: WorkerRole | None = None) -> MeterConfig:
    energy = None
    if settings.energy_metering:
        energy = EnergySettings(
            country_iso_code=settings.country_iso_code,
            region=settings.region,
            carbon_intensity_g_per_kwh=settings.carbon_intensity_g_per_kwh,
            pue=settings.pue,
            interval_s=settings.meter_interval_s,
            tracking_mode=settings.tracking_mode,
            force_cpu_power_w=settings.force_cpu_power_w,
            force_ram_power_w=settings.force_ram_power_w,
            gpu_ids=None,
        )
    return MeterConfig(
        ledger_path=settings.ledger_path,
        interval_s=settings.meter_interval_s,
        energy=energy,
        prices=Prices(
            energy_per_kwh=settings.energy_price_per_kwh,
            instance_per_hour=settings.instance_price_per_hour,
            currency=settings.currency,
        ),
        worker=role.index if role else 0,
        workers=role.count if role else 1,
    )


def display_address(host: str, port: int) -> str:
    """host:port as gRPC and browsers write it (IPv6 in brackets)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class App:
    """One running wattserve server: the whole server, or one of its worker processes."""

    def __init__(self, settings: ServeSettings, role: WorkerRole | None = None) -> None:
        self.settings = settings
        self.role = role
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._health = health_aio.HealthServicer()
        self._registry: ModelRegistry | None = None
        self._dataplane: DataPlane | None = None
        self._server: object | None = None
        self._meter: Meter | None = None
        self._metrics: object | None = None

    @property
    def dataplane(self) -> DataPlane:
        """What the gRPC service calls, once started: for callers in the same process."""
        if self._dataplane is None:
            raise RuntimeError("the server has not started")
        return self._dataplane

    async def start(self) -> int:
        """Listen, load the models, then report ready. Returns the bound port."""
        settings = self.settings
        root = settings.repository
        if root is None:
            try:
                root = await asyncio.to_thread(ensure_demo_repository, settings.demo_dir)
            except ModuleNotFoundError as exc:
                raise ModelLoadError(str(exc)) from exc
        meter = None
        if settings.metering_enabled:
            meter = self._meter = Meter(meter_config(settings, self.role))
            await meter.start()
        registry = ModelRegistry(
            Repository(root),
            functools.partial(build_model, observer=meter.recorder if meter else None),
        )
        explicit = settings.model_control_mode == "explicit"
        dataplane = DataPlane(
            registry,
            explicit_model_control=explicit,
            observer=meter,
            response_figures=settings.response_figures,
        )
        if meter is not None and settings.metrics_enabled:
            # A worker's endpoint is private (loopback, any port): the parent serves their sum.
            host, port = (
                ("127.0.0.1", 0) if self.role else (settings.metrics_host, settings.metrics_port)
            )
            server_, _, self.metrics_port = serve_metrics(
                host, port, MeterCollector(registry.loaded, meter)
            )
            self._metrics = server_
            logger.info(
                "Prometheus metrics %s http://%s/metrics",
                "of this worker only on" if self.role else "on",
                display_address(host, self.metrics_port),
            )
        for service in ("", SERVICE_NAME, HEALTH_SERVICE):
            await self._health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        server = build_server(
            dataplane,
            self._health,
            max_message_bytes=settings.max_message_bytes,
            reuse_port=self.role is not None,
        )
        address = display_address(settings.host, settings.port)
        port = int(server.add_insecure_port(address))
        await server.start()  # live (ServerLive) while models load; ready only afterwards
        self._registry, self._dataplane, self._server, self.port = registry, dataplane, server, port

        names = registry.repository.model_names()
        if explicit:
            names = names if "*" in settings.load_model else settings.load_model
        for name in names:
            # A broken model is logged and indexed by the registry; the others still serve.
            with contextlib.suppress(WattserveError):
                await registry.load(name)
        dataplane.ready = True
        for service in ("", SERVICE_NAME):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        ready = [e.name for e in registry.index() if e.state == "READY"]
        logger.info(
            "wattserve ready: serving %d model(s) on %s (repository %s, event loop %s): %s",
            len(set(ready)),
            display_address(settings.host, port),
            registry.repository.root,
            loop_kind(asyncio.get_running_loop()),
            ", ".join(sorted(set(ready))) or "none",
        )
        return port

    async def stop(self) -> None:
        """Not ready → stop accepting → finish in-flight requests → drain batchers → release."""
        if self._dataplane is not None:
            self._dataplane.ready = False
        await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(self.settings.grace_period_s)  # type: ignore[attr-defined]
        if self._registry is not None:
            await self._registry.close()
        if self._meter is not None:
            await self._meter.stop()
        if self._metrics is not None:
            self._metrics.shutdown()  # type: ignore[attr-defined]
        logger.info("wattserve stopped")

    async def run_until_signalled(self, on_ready: Callable[[App], None] | None = None) -> None:
        """Serve until SIGINT or SIGTERM; `on_ready` is called once the models are loaded."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        # What start-up built (modules, sessions, codecarbon's data) lives as long as the process:
        # moved out of the collector's sight, it is no longer scanned by every full collection,
        # which otherwise pauses the event loop for 40-70 ms on a 2-core VM (docs/performance.md).
        gc.collect()
        gc.freeze()
        if on_ready is not None:
            on_ready(self)
        await stop.wait()
        logger.info("shutting down (grace period %.1f s)", self.settings.grace_period_s)
        await self.stop()
