"""The models being served: load, look up by name and version, unload, and report their state."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from wattserve.core.datatypes import Datatype
from wattserve.core.errors import ModelLoadError, ModelNotFound, Unavailable, WattserveError
from wattserve.core.repository import ModelSource, Repository
from wattserve.core.statistics import ModelStatistics
from wattserve.core.types import DEFAULT_TENANT, Signature, Tensors

logger = logging.getLogger(__name__)

State = Literal["READY", "LOADING", "UNLOADING", "UNAVAILABLE"]


class Scheduler(Protocol):
    """What the core needs of a batcher (wattserve.batching implements it)."""

    @property
    def queue_depth(self) -> int: ...

    async def infer(
        self,
        inputs: Tensors,
        rows: int,
        shape_key: Hashable,
        deadline: float | None,
        tenant: str = DEFAULT_TENANT,
    ) -> tuple[Tensors, int]:
        """Run one validated request (batched with others or alone); (outputs, ns queued)."""
        ...

    def submit(
        self,
        inputs: Tensors,
        rows: int,
        shape_key: Hashable,
        deadline: float | None,
        tenant: str = DEFAULT_TENANT,
    ) -> asyncio.Future[tuple[Tensors, int]]:
        """Queue one validated request; the future resolves to (outputs, ns queued)."""
        ...

    async def close(self) -> None: ...


@dataclass(slots=True, eq=False)
class ServedModel:
    """One loaded version of a model, ready to take requests."""

    name: str
    version: int
    source: ModelSource
    signature: Signature
    scheduler: Scheduler
    instances: int
    providers: list[str]
    close: Callable[[], Awaitable[None]]
    """Drains the scheduler and releases the sessions."""
    statistics: ModelStatistics = field(default_factory=ModelStatistics)
    output_types: dict[str, Datatype] = field(init=False)
    all_outputs: tuple[str, ...] = field(init=False)
    label: str = field(init=False)
    """"model 'NAME' version N", for messages (built once: every request passes it on)."""

    def __post_init__(self) -> None:
        self.output_types = {t.name: t.datatype for t in self.signature.outputs}
        self.all_outputs = tuple(self.output_types)
        self.label = f"model '{self.name}' version {self.version}"


ModelBuilder = Callable[[ModelSource], Awaitable[dict[int, ServedModel]]]


@dataclass(frozen=True, slots=True)
class IndexEntry:
    name: str
    version: str
    state: State
    reason: str


class ModelRegistry:
    """Name → version → ServedModel, plus why any model is not being served."""

    def __init__(self, repository: Repository, build: ModelBuilder) -> None:
        self.repository = repository
        self._build = build
        self._models: dict[str, dict[int, ServedModel]] = {}
        self._states: dict[str, State] = {}
        self._reasons: dict[str, str] = {}
        self._lock = asyncio.Lock()

    def get(self, name: str, version: str = "") -> ServedModel:
        versions = self._models.get(name)
        if versions is None:
            state = self._states.get(name)
            if state is None:
                if self.repository.has_model(name):
                    raise Unavailable(
                        f"model '{name}' is in the repository but not loaded; load it with "
                        f"RepositoryModelLoad (explicit model control)"
                    )
                raise ModelNotFound(f"unknown model '{name}'")
            reason = self._reasons.get(name)
            raise Unavailable(
                f"model '{name}' is not ready (state {state}" + (f": {reason})" if reason else ")")
            )
        if not version:
            return versions[max(versions)]
        if not version.isdigit() or int(version) not in versions:
            raise ModelNotFound(
                f"model '{name}' has no version '{version}' being served (versions: "
                f"{', '.join(str(v) for v in sorted(versions))})"
            )
        return versions[int(version)]

    def versions(self, name: str) -> list[ServedModel]:
        self.get(name)
        return [self._models[name][v] for v in sorted(self._models[name])]

    def loaded(self) -> list[ServedModel]:
        return [m for name in sorted(self._models) for m in self.versions(name)]

    async def load(self, name: str) -> None:
        """Load (or reload) a model; the old versions keep serving until the new ones are ready."""
        async with self._lock:
            previous = self._models.get(name)
            self._states[name] = "LOADING"
            try:
                source = self.repository.read(name)
                models = await self._build(source)
            except ModelNotFound:
                self._forget(name, previous)
                raise
            except WattserveError as exc:
                self._fail(name, previous, exc)
                raise
            except Exception as exc:
                self._fail(name, previous, exc)
                raise ModelLoadError(f"model '{name}': {exc}") from exc
            self._models[name] = models
            self._states[name] = "READY"
            self._reasons.pop(name, None)
            logger.info(
                "loaded model '%s' versions %s on %s",
                name,
                sorted(models),
                ", ".join(next(iter(models.values())).providers),
            )
            if previous:
                await asyncio.gather(*(m.close() for m in previous.values()))

    def _fail(self, name: str, previous: dict[int, ServedModel] | None, exc: Exception) -> None:
        logger.error("model '%s' failed to load: %s", name, exc)
        self._reasons[name] = str(exc)
        self._states[name] = "READY" if previous else "UNAVAILABLE"

    def _forget(self, name: str, previous: dict[int, ServedModel] | None) -> None:
        if not previous:
            self._states.pop(name, None)
            self._reasons.pop(name, None)

    async def unload(self, name: str) -> None:
        """Stop taking requests for the model, finish what is queued, release it."""
        async with self._lock:
            models = self._models.get(name)
            if models is None:
                if name not in self._states:
                    raise ModelNotFound(f"unknown model '{name}'")
                self._states[name] = "UNAVAILABLE"
                return
            self._states[name] = "UNLOADING"
            del self._models[name]
            await asyncio.gather(*(m.close() for m in models.values()))
            self._states[name] = "UNAVAILABLE"
            self._reasons[name] = "unloaded"
            logger.info("unloaded model '%s'", name)

    def index(self) -> list[IndexEntry]:
        """Every model in the repository folder and in memory, with its state."""
        try:
            names = set(self.repository.model_names())
        except ModelLoadError:
            names = set()
        entries = []
        for name in sorted(names | set(self._states)):
            if name in self._models:
                entries += [
                    IndexEntry(name, str(v), self._states[name], "")
                    for v in sorted(self._models[name])
                ]
            else:
                entries.append(
                    IndexEntry(
                        name, "", self._states.get(name, "UNAVAILABLE"), self._reasons.get(name, "")
                    )
                )
        return entries

    async def close(self) -> None:
        for name in list(self._models):
            await self.unload(name)
