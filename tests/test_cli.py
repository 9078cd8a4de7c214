"""The `wattserve` command: help for every setting, flags and WATTSERVE_* variables, errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from pydantic import ValidationError

from tests.support import run_server
from wattserve import settings as settings_module
from wattserve.settings import ServeSettings


def wattserve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wattserve", *args], capture_output=True, text=True, timeout=60
    )


def test_help_explains_every_setting_with_its_variable() -> None:
    result = wattserve("serve", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for name, field in ServeSettings.model_fields.items():
        assert "--" + name.replace("_", "-") in text
        assert f"WATTSERVE_{name.upper()}" in text
        assert field.description, f"setting {name} has no docstring"
        assert " ".join(field.description.split())[:40] in text
    assert "serve" in wattserve("--help").stdout


def test_invalid_setting_exits_2_naming_it() -> None:
    result = wattserve("serve", "--port", "70000")
    assert result.returncode == 2
    assert "port" in result.stderr
    assert "less than or equal to 65535" in result.stderr


def test_missing_repository_exits_1_saying_so(tmp_path: Path) -> None:
    result = wattserve("serve", "--port", "0", "--repository", str(tmp_path / "absent"))
    assert result.returncode == 1
    assert f"cannot serve: model repository {tmp_path / 'absent'} does not exist" in result.stderr


def test_health_command_reports_serving_and_unreachable(address: str) -> None:
    serving = wattserve("health", "--address", address)
    assert (serving.returncode, serving.stdout.strip()) == (0, f"{address}: SERVING")
    unknown = wattserve("health", "--address", address, "--service", "no.Such")
    assert unknown.returncode == 1
    assert "NOT_FOUND" in unknown.stderr
    down = wattserve("health", "--address", "127.0.0.1:1", "--timeout-s", "2")
    assert down.returncode == 1
    assert "UNAVAILABLE" in down.stderr


def test_serves_the_demo_repository_by_default(demo_repository: Path) -> None:
    with (
        run_server("--demo-dir", str(demo_repository)) as server,
        triton.InferenceServerClient(server.address) as client,
    ):
        names = {m.name for m in client.get_model_repository_index().models}
        assert client.is_server_ready()
    assert names == {"dense", "tabular_classifier", "text_classifier"}
    assert f"(repository {demo_repository}, event loop uvloop)" in server.text()


def test_asyncio_event_loop_serves_as_well(demo_repository: Path) -> None:
    rows = np.random.default_rng(7).normal(size=(3, 30)).astype(np.float32)
    with (
        run_server("--demo-dir", str(demo_repository), "--event-loop", "asyncio") as server,
        triton.InferenceServerClient(server.address) as client,
    ):
        tensor = triton.InferInput("features", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows)
        answer = client.infer("tabular_classifier", [tensor])
        assert set(answer.as_numpy("label")) <= {0, 1} and answer.as_numpy("label").shape == (3,)
        np.testing.assert_allclose(answer.as_numpy("probabilities").sum(axis=1), 1.0, rtol=1e-5)
    assert "event loop asyncio)" in server.text()


def test_uvloop_asked_for_but_missing_is_a_settings_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings_module, "uvloop_installed", lambda: False)
    with pytest.raises(ValidationError, match="uvloop is not installed: pip install uvloop"):
        ServeSettings(event_loop="uvloop")
    assert ServeSettings(event_loop="auto").event_loop == "auto"  # auto falls back to asyncio


def test_environment_variables_configure_the_server(repository: Path) -> None:
    env = {
        "WATTSERVE_REPOSITORY": str(repository),
        "WATTSERVE_MODEL_CONTROL_MODE": "explicit",
        "WATTSERVE_LOAD_MODEL": '["versioned", "dense"]',
    }
    with run_server(env=env) as server, triton.InferenceServerClient(server.address) as client:
        ready = sorted(
            {m.name for m in client.get_model_repository_index().models if m.state == "READY"}
        )
    assert ready == ["dense", "versioned"]
    assert "serving 2 model(s)" in server.text()
