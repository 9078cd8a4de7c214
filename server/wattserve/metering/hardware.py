"""Hardware utilisation: this process and the machine (psutil), NVIDIA GPUs through NVML."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psutil

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GpuSample:
    index: int
    uuid: str
    utilization: float
    """0..1 over NVML's last sample period."""
    memory_used_bytes: int
    memory_total_bytes: int
    power_w: float
    power_limit_w: float
    energy_j: float | None
    """Total energy since the driver loaded (NVML, Volta and newer); None where unsupported."""


@dataclass(frozen=True, slots=True)
class HardwareSample:
    process_cpu_utilization: float
    """Cores this process used ÷ cores in the machine, 0..1, since the previous sample."""
    machine_cpu_utilization: float
    process_memory_bytes: int
    machine_memory_used_bytes: int
    machine_memory_total_bytes: int
    gpus: tuple[GpuSample, ...] | None
    """None when no NVIDIA GPU (or driver) is present: absent, not zero."""


class HardwareSampler:
    """Sampled once per meter interval, off the request path."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self._cores = psutil.cpu_count() or 1
        # The first cpu_percent calls only set the baseline for the next ones.
        self._process.cpu_percent(None)
        psutil.cpu_percent(None)
        self._nvml = _open_nvml()

    def sample(self) -> HardwareSample:
        memory = psutil.virtual_memory()
        return HardwareSample(
            process_cpu_utilization=self._process.cpu_percent(None) / 100 / self._cores,
            machine_cpu_utilization=psutil.cpu_percent(None) / 100,
            process_memory_bytes=self._process.memory_info().rss,
            machine_memory_used_bytes=memory.total - memory.available,
            machine_memory_total_bytes=memory.total,
            gpus=None if self._nvml is None else _sample_gpus(self._nvml),
        )

    def close(self) -> None:
        if self._nvml is not None:
            self._nvml.nvmlShutdown()


def _open_nvml() -> Any:
    try:
        import pynvml

        pynvml.nvmlInit()
        if pynvml.nvmlDeviceGetCount() == 0:
            pynvml.nvmlShutdown()
            return None
    except Exception as exc:  # no library, no driver, no device: all mean "no GPU here"
        logger.info("no NVIDIA GPU metering: %s", exc)
        return None
    return pynvml


def _sample_gpus(nvml: Any) -> tuple[GpuSample, ...]:
    samples = []
    for index in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        try:
            energy_j: float | None = nvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000
        except nvml.NVMLError:
            energy_j = None
        samples.append(
            GpuSample(
                index=index,
                uuid=str(nvml.nvmlDeviceGetUUID(handle)),
                utilization=nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100,
                memory_used_bytes=int(memory.used),
                memory_total_bytes=int(memory.total),
                power_w=nvml.nvmlDeviceGetPowerUsage(handle) / 1000,
                power_limit_w=nvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000,
                energy_j=energy_j,
            )
        )
    return tuple(samples)
