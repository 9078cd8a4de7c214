"""Energy per interval from codecarbon's OfflineEmissionsTracker: offline, explicit, never zero.

codecarbon 3.3.2 facts this relies on (read in its source; the tests check their consequences):

- Each measurement (a `threading.Timer` every `measure_power_secs`) calls `live_out(total, delta)`
  on every output handler when `api_call_interval=1`. `total` is cumulative, `delta` the change
  since the previous call (kWh, kg, s). PUE is applied as each component is measured: both
  include it.
- `start()` measures once itself (first reading on the caller's thread). `stop()` measures once
  more unless the last measurement is under 50 ms old, then calls `out(total, delta)` with the
  rest: the last readings arrive on the thread calling stop(), before it returns.
- `__init__`, `start()` and `stop()` are wrapped in `@suppress(Exception)` (failure = a log line
  and a dead tracker): we call the undecorated functions (`__wrapped__`) so failures raise.
- `PeriodicScheduler.stop()` neither waits for a running measurement nor stops a timer re-arming
  at that instant: we wrap the schedulers' functions with a lock and a closed flag.
- Any constructor argument left out is read from `CODECARBON_*` variables and `.codecarbon.config`
  files, which can switch on CSV, API, HTTP, Prometheus or Electricity Maps output. We pass every
  argument (`output_methods=[]` makes the deprecated `save_to_*` flags moot;
  `electricitymaps_api_token=""` since None lets a `co2_signal_api_token` from the environment
  through) and check after construction that our handler is the only output.
"""

from __future__ import annotations

import logging
import math
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import psutil
from codecarbon.emissions_tracker import OfflineEmissionsTracker
from codecarbon.output_methods.base_output import BaseOutput

# GridIntensity and grid_intensity are part of this module's API, defined next door.
from wattserve.metering.intensity import GridIntensity as GridIntensity
from wattserve.metering.intensity import grid_intensity, normalise_country

logger = logging.getLogger(__name__)

UJ_PER_KWH = 3.6e12
UG_PER_KG = 1e9
CHILDREN_REFRESH_S = 30.0
"""How often the measured process's descendants are looked up again (see _ProcessTree)."""

# CPU modes of codecarbon's CPU object that read an energy counter.
_MEASURED_CPU_MODES = {
    "intel_rapl": "measured:rapl",
    "windows_emi": "measured:emi",
    "intel_power_gadget": "measured:power-gadget",
}
_GPU_LIBRARIES = {"NvidiaGPUDevice": "measured:nvml", "AMDGPUDevice": "measured:amdsmi"}


class EnergyMeterError(RuntimeError):
    """codecarbon could not start or stop: the intervals concerned have no energy data."""


@dataclass(frozen=True, slots=True)
class EnergySettings:
    country_iso_code: str | None
    """ISO 3166 alpha-3 code as codecarbon wants it ("FRA", "USA"); None: world average."""
    region: str | None
    """codecarbon region (a US state, Canadian province, Chinese province, Nordic zone) or None."""
    carbon_intensity_g_per_kwh: float | None
    """Grid intensity override; None: codecarbon's bundled data for the country and region."""
    pue: float
    """Power usage effectiveness, >= 1.0; multiplies every energy figure."""
    interval_s: float
    """codecarbon's measure_power_secs: one reading per interval."""
    tracking_mode: Literal["process", "machine"]
    """"process": this process's CPU share; "machine": the whole machine."""
    force_cpu_power_w: float | None
    """CPU power at full load (used as TDP, scaled by load) instead of codecarbon's guess."""
    force_ram_power_w: float | None
    """Constant RAM power instead of codecarbon's model."""
    gpu_ids: list[int] | None
    """GPUs to measure; None: all visible (codecarbon honours CUDA_VISIBLE_DEVICES)."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.pue) and self.pue >= 1.0):
            raise ValueError(f"pue must be >= 1.0, got {self.pue}")
        if not (math.isfinite(self.interval_s) and self.interval_s > 0):
            raise ValueError(f"interval_s must be > 0, got {self.interval_s}")
        if self.tracking_mode not in ("process", "machine"):
            raise ValueError(
                f"tracking_mode must be 'process' or 'machine': {self.tracking_mode!r}"
            )
        for name in ("force_cpu_power_w", "force_ram_power_w"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be > 0 W, got {value}")


@dataclass(frozen=True, slots=True)
class EnergyReading:
    """One interval as codecarbon measured it. Energies include PUE."""

    duration_s: float
    energy_uj: int
    """Total, integer micro-joules. Readings add up exactly to codecarbon's total for the run."""
    cpu_energy_uj: int
    ram_energy_uj: int
    gpu_energy_uj: int | None
    """None: no GPU is measured (not zero)."""
    method: str
    """How each part was obtained, e.g. "cpu=estimated:tdp;ram=estimated:model;gpu=absent"."""
    codecarbon_emissions_ug: int
    """codecarbon's own emissions for the interval (µg CO2e), for cross-checking."""


@dataclass(frozen=True, slots=True)
class _Totals:
    """codecarbon's cumulative figures, rounded to integers once."""

    duration_s: float = 0.0
    energy_uj: int = 0
    cpu_uj: int = 0
    ram_uj: int = 0
    gpu_uj: int = 0
    emissions_ug: int = 0

    @classmethod
    def of(cls, total: Any) -> _Totals:
        return cls(
            duration_s=float(total.duration),
            energy_uj=round(total.energy_consumed * UJ_PER_KWH),
            cpu_uj=round(total.cpu_energy * UJ_PER_KWH),
            ram_uj=round(total.ram_energy * UJ_PER_KWH),
            gpu_uj=round(total.gpu_energy * UJ_PER_KWH),
            emissions_ug=round(total.emissions * UG_PER_KG),
        )


class _ReadingHandler(BaseOutput):
    """codecarbon's output handler: turns each measurement into an EnergyReading.

    Readings are differences of rounded cumulative totals (not rounded deltas), so rounding never
    loses or invents a micro-joule over the run. Calls are serialised by EnergyMeter.
    """

    def __init__(self, on_reading: Callable[[EnergyReading], None]) -> None:
        self._on_reading = on_reading
        self._last = _Totals()
        self.method = ""
        self.has_gpu = False
        self.readings = 0

    def live_out(self, total: Any, delta: Any) -> None:
        self._deliver(total)

    def out(self, total: Any, delta: Any) -> None:  # from stop(): the rest of the last interval
        self._deliver(total)

    def _deliver(self, total: Any) -> None:
        now, last = _Totals.of(total), self._last
        self._last = now
        self.readings += 1
        reading = EnergyReading(
            duration_s=now.duration_s - last.duration_s,
            energy_uj=now.energy_uj - last.energy_uj,
            cpu_energy_uj=now.cpu_uj - last.cpu_uj,
            ram_energy_uj=now.ram_uj - last.ram_uj,
            gpu_energy_uj=now.gpu_uj - last.gpu_uj if self.has_gpu else None,
            method=self.method,
            codecarbon_emissions_ug=now.emissions_ug - last.emissions_ug,
        )
        try:
            self._on_reading(reading)
        except Exception:  # keep codecarbon's timer thread alive
            logger.exception("on_reading failed; this interval's energy reading is lost")


class EnergyMeter:
    """Wraps codecarbon's OfflineEmissionsTracker; every parameter passed explicitly; offline.

    `on_reading` is called once per interval, on codecarbon's timer thread (on the caller's thread
    for the first reading, in start(), and the last ones, in stop()), never two at a time. It
    should only hand the reading over, e.g. with `loop.call_soon_threadsafe`.
    """

    def __init__(
        self,
        settings: EnergySettings,
        on_reading: Callable[[EnergyReading], None],
        *,
        pid: int | None = None,
    ) -> None:
        """`pid`: the process charged in "process" tracking mode (with its children); None: this
        one. Lets a separate measuring process charge the server it measures."""
        self._settings = settings
        self._pid = pid
        # An unknown country or region is a ValueError now, not a silent world average later.
        self._country = (
            normalise_country(settings.country_iso_code) if settings.country_iso_code else None
        )
        self._region = settings.region.strip().lower() if settings.region else None
        grid_intensity(self._country, self._region, None)
        self._handler = _ReadingHandler(on_reading)
        self._lock = threading.Lock()  # one measurement at a time; see _guard
        self._closed = False
        self._tracker: Any = None
        self._method: str | None = None

    @property
    def method(self) -> str:
        """How codecarbon measures each part here, known once start() has returned."""
        if self._method is None:
            raise RuntimeError("EnergyMeter.method is known once start() has succeeded")
        return self._method

    def start(self) -> None:
        """Probe the hardware (1-2 s, blocking: run it in a thread) and start measuring.

        Raises EnergyMeterError if codecarbon cannot measure; the caller then has no energy data.
        """
        if self._tracker is not None:
            raise RuntimeError("an EnergyMeter can be started only once")
        try:
            self._tracker = self._new_tracker()
            self._start(self._tracker)
        except Exception as exc:
            self._abandon()
            raise EnergyMeterError(f"codecarbon could not start measuring energy: {exc}") from exc

    def stop(self) -> None:
        """Stop measuring; the last, partial interval reaches on_reading before this returns."""
        if self._tracker is None or self._closed:
            return
        with self._lock:  # waits for a measurement in progress on the timer thread
            self._closed = True
        try:
            _unsuppressed(type(self._tracker).stop)(self._tracker)
        except Exception as exc:
            raise EnergyMeterError(f"codecarbon failed to stop; last interval lost: {exc}") from exc

    def _new_tracker(self) -> Any:
        s = self._settings
        # codecarbon sets this level itself once constructed; set it first to skip the warnings it
        # logs on the way ("Multiple instances of codecarbon are allowed ...").
        logging.getLogger("codecarbon").setLevel(logging.ERROR)
        tracker: Any = OfflineEmissionsTracker.__new__(OfflineEmissionsTracker)
        _unsuppressed(OfflineEmissionsTracker.__init__)(
            tracker,
            # Where: grid intensity from the bundled data (or the override), nothing looked up.
            country_iso_code=self._country,
            region=self._region,
            cloud_provider=None,
            cloud_region=None,
            country_2letter_iso_code=None,
            force_carbon_intensity_g_co2e_kwh=s.carbon_intensity_g_per_kwh,
            electricitymaps_api_token="",
            # What and how often.
            measure_power_secs=s.interval_s,
            api_call_interval=1,
            tracking_mode=s.tracking_mode,
            pue=s.pue,
            wue=0.0,
            force_cpu_power=s.force_cpu_power_w,
            force_ram_power=s.force_ram_power_w,
            force_mode_cpu_load=False,
            gpu_ids=list(s.gpu_ids) if s.gpu_ids is not None else None,
            rapl_include_dram=False,  # RAM has its own figure: do not count DRAM twice
            rapl_prefer_psys=False,
            # Outputs: our handler only.
            output_handlers=[self._handler],
            output_methods=[],
            emissions_endpoint=None,
            api_endpoint=None,
            api_key=None,
            experiment_id=None,
            output_dir=tempfile.gettempdir(),  # must exist; nothing is written there
            output_file="emissions.csv",
            on_csv_write="append",
            logging_logger=None,
            prometheus_url=None,
            metadata=None,
            project_name="wattserve",
            experiment_name="wattserve",
            log_level="error",
            logger_preamble="",
            allow_multiple_runs=True,  # False takes a lock file and replaces the SIGTERM handler
        )
        outputs = tracker._output_handlers
        if len(outputs) != 1 or outputs[0] is not self._handler:
            raise RuntimeError(f"codecarbon configured outputs other than ours: {outputs}")
        if tracker._electricitymaps_api_token:
            raise RuntimeError("codecarbon picked up an Electricity Maps token: it would go online")
        return tracker

    def _start(self, tracker: Any) -> None:
        tracker.get_detected_hardware()  # the slow part: probes CPU, RAM and GPUs
        if self._pid is not None:
            _retarget(tracker._hardware, self._pid)
        self._method, self._handler.has_gpu = _describe(tracker._hardware, self._settings)
        self._handler.method = self._method
        self._guard(tracker._scheduler)
        self._guard(tracker._scheduler_monitor_power)
        with self._lock:  # a timer measurement waits until start() has finished its own
            _unsuppressed(type(tracker).start)(tracker)
        if tracker._start_time is None or self._handler.readings == 0:
            raise RuntimeError("the tracker did not take its first measurement")

    def _guard(self, scheduler: Any) -> None:
        """Serialise the scheduler's function with start/stop; after stop it cancels its timer."""
        function = scheduler.function

        def guarded() -> None:
            with self._lock:
                if self._closed:
                    scheduler.stop()  # a timer codecarbon's stop() raced with re-armed itself
                    return
                function()

        scheduler.function = guarded

    def _abandon(self) -> None:
        with self._lock:
            self._closed = True
        for name in ("_scheduler", "_scheduler_monitor_power"):
            if (scheduler := getattr(self._tracker, name, None)) is not None:
                scheduler.stop()


def _unsuppressed(function: Callable[..., Any]) -> Callable[..., Any]:
    """The function under codecarbon's @suppress(Exception) decorator, so that failures raise."""
    unwrapped: Callable[..., Any] = getattr(function, "__wrapped__", function)
    return unwrapped


def _retarget(hardware: list[Any], pid: int) -> None:
    """Point codecarbon's process-mode CPU and RAM objects at another process and its children.

    codecarbon 3.3.2 fixes the process at construction: CPU keeps `_pid` and `_process`
    (psutil.Process()), RAM keeps `_pid`. Both read them at every measurement, and both charge
    the process's descendants as well, through `children(recursive=True)`: CPU on `_process`, RAM
    on a fresh `psutil.Process(_pid)` in `_get_children_memories`. Both now use one
    `_ProcessTree`, which looks the descendants up less often.
    """
    tree = _ProcessTree(pid)
    for item in hardware:
        kind = type(item).__name__
        if kind == "CPU":
            item._pid, item._process = pid, tree
        elif kind == "RAM":
            item._pid = pid
            item._get_children_memories = lambda: [c.memory_info().rss for c in tree.children()]


class _ProcessTree(psutil.Process):
    """A process whose descendants are found again every CHILDREN_REFRESH_S, not at every call.

    psutil finds children by reading the stat file of every process on the machine; codecarbon's
    process mode asks three times per second (CPU power monitor, CPU and RAM measurement), and
    that was most of the energy process's own CPU time. The server's only child is normally the
    energy process itself; a child it starts later is charged from the next refresh on.
    Children that have exited are dropped at once.
    """

    def __init__(self, pid: int) -> None:
        super().__init__(pid)
        self._descendants: list[psutil.Process] = []
        self._found_at = -math.inf

    def children(self, recursive: bool = False) -> list[psutil.Process]:
        """All descendants, whatever `recursive` says: codecarbon asks for nothing else."""
        now = time.monotonic()
        if now - self._found_at >= CHILDREN_REFRESH_S:
            self._descendants = super().children(recursive=True)
            self._found_at = now
        return [child for child in self._descendants if child.is_running()]


def _describe(hardware: list[Any], settings: EnergySettings) -> tuple[str, bool]:
    """The method string for codecarbon's hardware objects, and whether a GPU is measured."""
    cpu = ram = None
    gpu = "absent"
    for item in hardware:
        kind, part = type(item).__name__, getattr(item, "chip_part", None)
        if kind == "CPU":
            if item._mode in _MEASURED_CPU_MODES:
                cpu = _MEASURED_CPU_MODES[item._mode]
            elif settings.force_cpu_power_w is not None:
                cpu = "estimated:forced"
            elif item._mode in ("cpu_load", "constant"):
                cpu = "estimated:generic-tdp" if item._is_generic_tdp else "estimated:tdp"
            else:
                cpu = f"estimated:{item._mode}"
        elif kind == "RAM":
            ram = "estimated:model" if item._force_ram_power is None else "estimated:forced"
        elif kind in ("Raspberry", "AppleSiliconChip"):  # parts: CPU+RAM, CPU+GPU
            label = "measured:pmic" if kind == "Raspberry" else "measured:powermetrics"
            if part == "CPU":
                cpu = label
            elif part == "RAM":
                ram = label
            else:
                gpu = label
        elif kind == "GPU" and item.gpu_ids:
            libraries = {type(device).__name__ for device in item.devices.devices}
            gpu = "+".join(
                sorted(_GPU_LIBRARIES.get(name, f"measured:{name}") for name in libraries)
            )
    if cpu is None or ram is None:
        raise RuntimeError(f"codecarbon set up no CPU or no RAM measurement: {hardware}")
    return f"cpu={cpu};ram={ram};gpu={gpu}", gpu != "absent"
