"""The Prometheus endpoint: Triton's metric names where the meaning is the same, plus histograms
and wattserve's energy, carbon and cost counters. Everything is read at scrape time."""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from wattserve.core.registry import ServedModel
from wattserve.metering.hardware import GpuSample

if TYPE_CHECKING:
    from wattserve.metering.meter import Meter

logger = logging.getLogger(__name__)

MODEL_LABELS = ["model", "version"]
TENANT_LABELS = ["model", "version", "tenant"]
MACHINE_WIDE = frozenset(
    {
        "nv_cpu_utilization",
        "nv_cpu_memory_used_bytes",
        "nv_cpu_memory_total_bytes",
        "nv_gpu_utilization",
        "nv_gpu_memory_used_bytes",
        "nv_gpu_memory_total_bytes",
        "nv_gpu_power_usage",
        "nv_gpu_power_limit",
        "nv_gpu_energy_consumption",
        "wattserve_energy_method",
    }
)
"""Families that describe the machine (or a setting), not one process: every worker process
reports the same value, so the workers' sum reads it once. Everything else adds up."""


def _counter(name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=labels)


class MeterCollector(Collector):
    """Reads the served models' statistics and the meter's totals on each scrape."""

    def __init__(self, models: Callable[[], list[ServedModel]], meter: Meter) -> None:
        self._models = models
        self._meter = meter

    def collect(self) -> Iterator[Metric]:
        yield from self._serving()
        yield from self._histograms()
        yield from self._usage()
        yield from self._hardware()

    def _serving(self) -> Iterator[Metric]:
        families = {
            "success": _counter(
                "nv_inference_request_success", "Successful requests", MODEL_LABELS
            ),
            "failure": _counter("nv_inference_request_failure", "Failed requests", MODEL_LABELS),
            "count": _counter("nv_inference_count", "Inferences performed (rows)", MODEL_LABELS),
            "exec": _counter("nv_inference_exec_count", "Batches executed", MODEL_LABELS),
            "request_us": _counter(
                "nv_inference_request_duration_us", "End-to-end request time (µs)", MODEL_LABELS
            ),
            "queue_us": _counter(
                "nv_inference_queue_duration_us", "Time requests waited in queue (µs)", MODEL_LABELS
            ),
            "input_us": _counter(
                "nv_inference_compute_input_duration_us", "Batch merge time (µs)", MODEL_LABELS
            ),
            "infer_us": _counter(
                "nv_inference_compute_infer_duration_us", "Model run time (µs)", MODEL_LABELS
            ),
            "output_us": _counter(
                "nv_inference_compute_output_duration_us", "Batch split time (µs)", MODEL_LABELS
            ),
        }
        pending = GaugeMetricFamily(
            "nv_inference_pending_request_count",
            "Requests waiting in the queue",
            labels=MODEL_LABELS,
        )
        for model in self._models():
            labels = [model.name, str(model.version)]
            s = model.statistics
            values = {
                "success": s.success.count,
                "failure": s.fail.count,
                "count": s.inference_count,
                "exec": s.execution_count,
                "request_us": (s.success.ns + s.fail.ns) / 1000,
                "queue_us": s.queue.ns / 1000,
                "input_us": s.compute_input.ns / 1000,
                "infer_us": s.compute_infer.ns / 1000,
                "output_us": s.compute_output.ns / 1000,
            }
            for key, family in families.items():
                family.add_metric(labels, values[key])
            pending.add_metric(labels, model.scheduler.queue_depth)
        yield from families.values()
        yield pending
        failures = _counter(
            "wattserve_request_failures",
            "Failed requests by gRPC status code",
            [*MODEL_LABELS, "code"],
        )
        for (model_name, version, code), count in sorted(self._meter.failures.items()):
            failures.add_metric([model_name, version, code], count)
        yield failures

    def _histograms(self) -> Iterator[Metric]:
        specs = [
            ("wattserve_request_duration_seconds", "End-to-end request time", "request"),
            ("wattserve_queue_duration_seconds", "Time requests waited in the queue", "queue"),
            ("wattserve_compute_duration_seconds", "ONNX Runtime time per batch", "compute"),
            ("wattserve_batch_size_rows", "Rows per executed batch", "batch_rows"),
        ]
        for name, doc, kind in specs:
            family = HistogramMetricFamily(name, doc, labels=MODEL_LABELS)
            for (model_name, version), histogram in sorted(self._meter.histograms[kind].items()):
                family.add_metric(
                    [model_name, version], histogram.cumulative(), sum_value=histogram.total
                )
            yield family

    def _usage(self) -> Iterator[Metric]:
        meter = self._meter
        currency = meter.prices.currency
        predictions = _counter("wattserve_predictions", "Predictions (rows) served", TENANT_LABELS)
        energy = _counter("wattserve_energy_joules", "Energy attributed (J)", TENANT_LABELS)
        carbon = _counter("wattserve_carbon_grams", "Carbon attributed (gCO2e)", TENANT_LABELS)
        cost = _counter(
            "wattserve_cost", f"Cost attributed ({currency})", [*TENANT_LABELS, "currency"]
        )
        for (model_name, version, tenant), totals in sorted(meter.usage_totals.items()):
            labels = [model_name, version, tenant]
            predictions.add_metric(labels, totals.rows)
            if totals.energy_uj is not None:
                energy.add_metric(labels, totals.energy_uj / 1e6)
                carbon.add_metric(labels, (totals.carbon_ug or 0) / 1e6)
                cost.add_metric([*labels, currency], (totals.cost_nanos or 0) / 1e9)
        yield from (predictions, energy, carbon, cost)
        whole = meter.whole
        if whole.energy_uj is not None:
            yield _single(
                "wattserve_measured_energy_joules", "Energy measured, all", whole.energy_uj / 1e6
            )
            yield _single(
                "wattserve_idle_energy_joules",
                "Energy while no model computed",
                whole.idle_energy_uj / 1e6,
            )
            yield _single(
                "wattserve_measured_carbon_grams", "Carbon, all (gCO2e)", whole.carbon_ug / 1e6
            )
            yield _single(
                "wattserve_idle_carbon_grams",
                "Carbon while idle (gCO2e)",
                whole.idle_carbon_ug / 1e6,
            )
            yield _single(
                "nv_energy_consumption", "Energy consumed by this server (J)", whole.energy_uj / 1e6
            )
        info = GaugeMetricFamily(
            "wattserve_energy_method", "How energy is obtained (1 = in use)", labels=["method"]
        )
        info.add_metric([meter.energy_method], 1)
        yield info

    def _hardware(self) -> Iterator[Metric]:
        sample = self._meter.hardware_sample
        if sample is None:
            return
        yield GaugeMetricFamily(
            "nv_cpu_utilization",
            "Machine CPU utilisation (0..1)",
            value=sample.machine_cpu_utilization,
        )
        yield GaugeMetricFamily(
            "wattserve_process_cpu_utilization",
            "This process's CPU use ÷ machine cores (0..1)",
            value=sample.process_cpu_utilization,
        )
        yield GaugeMetricFamily(
            "nv_cpu_memory_used_bytes",
            "Machine memory in use",
            value=sample.machine_memory_used_bytes,
        )
        yield GaugeMetricFamily(
            "nv_cpu_memory_total_bytes", "Machine memory", value=sample.machine_memory_total_bytes
        )
        yield GaugeMetricFamily(
            "wattserve_process_memory_bytes",
            "Resident memory of this process",
            value=sample.process_memory_bytes,
        )
        if sample.gpus is None:
            return  # absent GPUs are not reported as zero
        gauges: dict[str, tuple[str, Callable[[GpuSample], float]]] = {
            "nv_gpu_utilization": ("GPU utilisation (0..1)", lambda g: g.utilization),
            "nv_gpu_memory_used_bytes": ("GPU memory in use", lambda g: g.memory_used_bytes),
            "nv_gpu_memory_total_bytes": ("GPU memory", lambda g: g.memory_total_bytes),
            "nv_gpu_power_usage": ("GPU power draw (W)", lambda g: g.power_w),
            "nv_gpu_power_limit": ("GPU power limit (W)", lambda g: g.power_limit_w),
        }
        for name, (doc, read) in gauges.items():
            family = GaugeMetricFamily(name, doc, labels=["gpu_uuid"])
            for gpu in sample.gpus:
                family.add_metric([gpu.uuid], read(gpu))
            yield family
        energy = CounterMetricFamily(
            "nv_gpu_energy_consumption", "GPU energy since driver load (J)", labels=["gpu_uuid"]
        )
        for gpu in sample.gpus:
            if gpu.energy_j is not None:
                energy.add_metric([gpu.uuid], gpu.energy_j)
        yield energy


def _single(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


class WorkersCollector(Collector):
    """The worker processes' private endpoints as one: per-process figures summed, machine-wide
    ones read once, plus `wattserve_workers`.

    A worker that does not answer a scrape counts at its last answer (and the log says so), so
    totals do not dip while it is slow. When a worker is replaced (it died and was started again,
    on a new port), its last answer's counters and histograms stay in the sum as a baseline, so
    the server's counters never go backwards; what it served after that answer is lost to
    Prometheus (the ledger loses at most its last interval).
    """

    def __init__(self, endpoints: Callable[[], dict[int, str]], timeout_s: float = 2.0) -> None:
        self._endpoints = endpoints
        self._timeout_s = timeout_s
        self._last: dict[int, tuple[str, str]] = {}
        """worker index -> (url, its last answer)"""
        self._retired: list[str] = []
        """Last answers of replaced workers: their counters and histograms."""
        # Loopback only, never through an HTTP proxy from the environment.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def collect(self) -> Iterator[Metric]:
        answered = 0
        for index, url in self._endpoints().items():
            last = self._last.get(index)
            if last is not None and last[0] != url:  # a new process in that worker's place
                self._retired.append(last[1])
                del self._last[index]
            try:
                with self._opener.open(url, timeout=self._timeout_s) as answer:
                    self._last[index] = (url, answer.read().decode())
                answered += 1
            except OSError as exc:
                logger.warning(
                    "worker %d metrics did not answer (%s): last answer used", index, exc
                )
        live = [text for _, text in self._last.values()]
        yield from merge_expositions(live, retired=self._retired)
        yield GaugeMetricFamily(
            "wattserve_workers", "Worker processes that answered this scrape", value=answered
        )


CUMULATIVE = frozenset({"counter", "histogram", "summary"})


def merge_expositions(texts: Iterable[str], retired: Iterable[str] = ()) -> Iterator[Metric]:
    """Prometheus text expositions added sample by sample (same name and labels), except the
    MACHINE_WIDE families, whose first value is kept. Of the `retired` expositions (workers that
    have been replaced) only the cumulative families count."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    parsed = [(family, False) for text in texts for family in text_string_to_metric_families(text)]
    parsed += [
        (family, True) for text in retired for family in text_string_to_metric_families(text)
    ]
    for family, is_retired in parsed:
        if is_retired and (family.type not in CUMULATIVE or family.name in MACHINE_WIDE):
            continue
        if family.name not in families:
            families[family.name] = Metric(family.name, family.documentation, family.type)
            values[family.name] = {}
        merged = values[family.name]
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            if key not in merged:
                merged[key] = sample.value
            elif family.name not in MACHINE_WIDE:
                merged[key] += sample.value
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
        yield family


def serve_metrics(host: str, port: int, collector: Collector) -> tuple[Any, Any, int]:
    """Start the HTTP endpoint on its own thread; returns (server, thread, bound port)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    server, thread = start_http_server(port, addr=host, registry=registry)
    return server, thread, int(server.server_address[1])
