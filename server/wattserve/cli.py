"""The `wattserve` command line. Flags are generated from the settings model, so the flags, the
WATTSERVE_* variables and `--help` can never disagree."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import typing
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from wattserve.metering.report import add_report_arguments, run_report
from wattserve.settings import ServeSettings


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_settings_flags(parser: argparse.ArgumentParser, model: type[ServeSettings]) -> None:
    prefix = model.model_config.get("env_prefix", "")
    for name, field in model.model_fields.items():
        default = "(built-in demo repository)" if field.default is None else _describe(field)
        help_text = " ".join((field.description or "").split())
        help_text += f" [env {prefix}{name.upper()}; default {default}]"
        kwargs: dict[str, Any] = {"dest": name, "help": help_text, "default": argparse.SUPPRESS}
        origin = typing.get_origin(field.annotation)
        if origin is list:
            kwargs["action"] = "append"
        if origin is typing.Literal:
            kwargs["choices"] = typing.get_args(field.annotation)
        parser.add_argument(_flag(name), **kwargs)


def _describe(field: FieldInfo) -> str:
    if field.default_factory is not None:
        return str(field.default_factory())  # type: ignore[call-arg]
    return str(field.default)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wattserve",
        description="Open Inference Protocol (gRPC) server for ONNX models with dynamic batching.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="serve a model repository over gRPC",
        description="Serve a model repository over gRPC (Open Inference Protocol, Triton-"
        "compatible). Every flag can also be set with the environment variable shown.",
    )
    _add_settings_flags(serve, ServeSettings)
    demo = commands.add_parser("demo", help="build the demo model repository and print its path")
    demo.add_argument("--demo-dir", type=Path, default=None, help="where to build it")
    report = commands.add_parser(
        "report",
        help="energy, carbon and cost from the usage ledger, as a table, CSV, JSON or HTML",
        description="Report the usage ledger over a period, grouped by model, tenant or day.",
    )
    add_report_arguments(report)
    sweep = commands.add_parser(
        "sweep",
        help="closed-loop concurrency sweep against any Open Inference Protocol server",
        description="Measure throughput and latency at fixed concurrencies (perf_analyzer's "
        "concurrency mode): warm-up, then windows until three agree.",
    )
    from wattserve_client import sweep as sweep_module

    sweep_module.add_arguments(sweep)
    capacity = commands.add_parser(
        "capacity",
        help="peak throughput within a latency SLO, replicas needed, cost per million predictions",
        description="Open-loop capacity search against any Open Inference Protocol server "
        "(with --metrics-url, wattserve's utilisation and meter figures too).",
    )
    from wattserve_client import capacity as capacity_module

    capacity_module.add_arguments(capacity)
    health = commands.add_parser(
        "health",
        help="ask a server's gRPC health service; exit 0 when SERVING (for container checks)",
    )
    health.add_argument("--address", default="127.0.0.1:8001", help="server HOST:PORT")
    health.add_argument("--service", default="", help='service to check ("" = the server)')
    health.add_argument("--timeout-s", type=float, default=5.0, help="give up after this long")
    return parser


def _health(address: str, service: str, timeout_s: float) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as error:
            print(f"{address}: {error.code().name}: {error.details()}", file=sys.stderr)  # noqa: T201
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    print(f"{address}: {status}")  # noqa: T201
    return 0 if answer.status == health_pb2.HealthCheckResponse.SERVING else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = vars(_parser().parse_args(argv))
    command = args.pop("command")
    if command == "report":
        return run_report(argparse.Namespace(**args))
    if command == "capacity":
        from wattserve_client import capacity as capacity_module

        return capacity_module.run(argparse.Namespace(**args))
    if command == "sweep":
        from wattserve_client import sweep as sweep_module

        return sweep_module.run(argparse.Namespace(**args))
    if command == "health":
        return _health(args["address"], args["service"], args["timeout_s"])
    if command == "demo":
        from wattserve.demo import ensure_demo_repository
        from wattserve.settings import default_demo_dir

        print(ensure_demo_repository(args["demo_dir"] or default_demo_dir()))  # noqa: T201
        return 0
    try:
        settings = ServeSettings(**args)
    except ValidationError as exc:
        print(f"wattserve: invalid settings:\n{exc}", file=sys.stderr)  # noqa: T201
        return 2
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if settings.workers > 1:
        from wattserve.workers import Supervisor

        return Supervisor(settings).run()
    from wattserve.app import App
    from wattserve.batching.loop_load import new_event_loop
    from wattserve.core.errors import WattserveError

    try:
        with asyncio.Runner(loop_factory=partial(new_event_loop, settings.event_loop)) as runner:
            runner.run(App(settings).run_until_signalled())
    except WattserveError as exc:
        logging.getLogger("wattserve").error("cannot serve: %s", exc)
        return 1
    return 0
