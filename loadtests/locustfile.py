"""Locust users for wattserve (or any Open Inference Protocol server) over gRPC.

    locust -f loadtests/locustfile.py,loadtests/shapes/smoke.py --headless -H 127.0.0.1:8001 \\
        --models tabular_classifier:3,dense:1 --tenants acme:3,globex:1 --slo-p99-ms 50 \\
        --csv results/smoke --html results/smoke.html --summary-json results/smoke.json

Each user is a closed loop (`--think-time-ms`, default 0, between calls): it picks a model and a
tenant by the weights of `--models` and `--tenants` and sends one ModelInfer. With `--stream` it
sends on a ModelStreamInfer stream instead (one per tenant, opened on first use and kept, since a
stream carries its tenant in its headers), one request in flight at a time. Payloads come from
each model's ModelMetadata (`wattserve_client.payloads`): seeded (`--seed`), valid for every
datatype, `--rows` per request, `--sequence-length` for variable dimensions. The load's shape
(how many users when) comes from a module of `loadtests/shapes/` given after the locustfile;
without one, Locust's `-u/-r/-t` apply. Gates and the fine latency summary: `gates.py`.
"""

from __future__ import annotations

import contextlib
import itertools
import random
from typing import Any

import gates
import grpc
import grpc_calls
from latency import Latencies
from locust import User, events, task
from locust.exception import StopUser

from wattserve.grpc.tenants import TENANT_HEADER
from wattserve.protocol import pb, pb_grpc
from wattserve_client._request import infer_request
from wattserve_client.payloads import PayloadShape, inputs_for

LATENCIES = Latencies()
gates.install(LATENCIES)
_user_numbers = itertools.count()


@events.init_command_line_parser.add_listener
def _(parser: Any) -> None:
    group = parser.add_argument_group("wattserve load")
    group.add_argument(
        "--models",
        default="",
        help="Weighted model mix, name[:weight],... (default: every ready model, equal weights)",
    )
    group.add_argument(
        "--tenants",
        default="",
        help=f"Weighted tenant mix sent as {TENANT_HEADER}, name[:weight],... "
        "(default: no header, the server's default tenant)",
    )
    group.add_argument("--rows", type=int, default=1, help="Rows per request")
    group.add_argument(
        "--sequence-length", type=int, default=16, help="Size of other variable dimensions"
    )
    group.add_argument("--seed", type=int, default=0, help="Seeds payloads and each user's picks")
    group.add_argument(
        "--think-time-ms", type=float, default=0.0, help="Pause after each call (0: closed loop)"
    )
    group.add_argument(
        "--stream",
        action="store_true",
        help="Send on ModelStreamInfer streams (one per user and tenant) instead of unary calls",
    )


def weighted(spec: str) -> dict[str, float]:
    """'a:3,b,c:0.5' -> {'a': 3.0, 'b': 1.0, 'c': 0.5}."""
    mix: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, weight = item.partition(":")
        value = float(weight) if weight else 1.0
        if value <= 0:
            raise ValueError(f"weight of {name!r} must be > 0, got {weight!r}")
        mix[name] = value
    return mix


class WattserveUser(User):
    """One closed-loop client of the server given by `--host`."""

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        options = environment.parsed_options
        self.think_s = options.think_time_ms / 1e3
        self.rng = random.Random(f"{options.seed}:{next(_user_numbers)}")
        self.channel: Any = None
        self.streams: list[grpc_calls.Stream] = []  # on_stop runs even when on_start stopped early

    def wait_time(self) -> float:
        return float(self.think_s)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        if not self.host:
            raise StopUser("give the server's address with -H/--host, e.g. 127.0.0.1:8001")
        reporter = grpc_calls.Reporter(self.environment.events.request.fire, LATENCIES)
        self.channel, reported = grpc_calls.channels(self.host, reporter)
        stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        models = weighted(options.models) or dict.fromkeys(_ready_models(stub), 1.0)
        shape = PayloadShape(rows=options.rows, sequence_length=options.sequence_length)
        self.requests = []
        for model in models:
            metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name=model), timeout=30)
            self.requests.append(infer_request(model, inputs_for(metadata, shape, options.seed)))
        self.model_weights = list(models.values())
        tenants = weighted(options.tenants)
        self.tenants: list[tuple[tuple[str, str], ...]] = [((TENANT_HEADER, t),) for t in tenants]
        self.tenants = self.tenants or [()]
        self.tenant_weights = list(tenants.values()) or [1.0]
        self.stub = pb_grpc.GRPCInferenceServiceStub(reported)
        self.streams = (
            [grpc_calls.Stream(stub, tenant, reporter) for tenant in self.tenants]
            if options.stream
            else []
        )

    def on_stop(self) -> None:
        for stream in self.streams:
            stream.close()
        if self.channel is not None:
            self.channel.close()

    @task
    def infer(self) -> None:
        request = self.rng.choices(self.requests, self.model_weights)[0]
        tenant = self.rng.choices(range(len(self.tenants)), self.tenant_weights)[0]
        if self.streams:
            self.streams[tenant].infer(request)  # reports its own failures; carry on
            return
        with contextlib.suppress(grpc.RpcError):  # reported by the interceptor; carry on
            self.stub.ModelInfer(
                request, timeout=grpc_calls.CALL_TIMEOUT_S, metadata=self.tenants[tenant]
            )


def _ready_models(stub: Any) -> list[str]:
    index = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True), timeout=30)
    return sorted({m.name for m in index.models})
