"""/api/security reports the subprocess and WASM sandboxes with their real configuration."""

from __future__ import annotations

from librefang.app import build_app
from librefang.testing import make_client


async def test_security_endpoint_reports_the_live_configuration(start_sandbox):
    kernel = await start_sandbox(
        '[exec_policy]\nmode = "allowlist"\nsafe_bins = ["ls", "cat"]\ntimeout_secs = 12\nmax_processes = 7\n'
        '[wasm_sandbox]\nfuel = 5000\ntimeout_secs = 2.5\nmemory_bytes = 1048576\n')
    client = make_client(build_app(kernel))
    response = await client.get("/api/security")
    assert response.status_code == 200
    systems = {s["name"]: s for s in (await response.get_json())["systems"]}
    shell = systems["subprocess_sandbox"]
    assert shell["plugin"] == "sandbox" and shell["active"] is True
    config = shell["config"]
    assert config["mode"] == "allowlist" and config["safe_bins"] == ["ls", "cat"]
    assert config["timeouts"]["wall_clock_secs"] == 12 and config["rlimits"]["processes"] == 7
    assert config["environment"]["cleared"] is True
    service = kernel.services["sandbox"].exec
    assert config["filesystem_confinement"]["enabled"] == service.confined
    assert config["pids_cgroup"]["enabled"] == (service.cgroup_root is not None)
    wasm = systems["wasm_sandbox"]
    assert wasm["active"] is True
    assert wasm["config"]["fuel_per_call"] == 5000 and wasm["config"]["epoch_deadline_secs"] == 2.5
    assert wasm["config"]["memory_limit_bytes"] == 1048576 and wasm["config"]["wasi"] is False


async def test_default_policy_reports_shell_off(start_sandbox):
    kernel = await start_sandbox()
    client = make_client(build_app(kernel))
    systems = {s["name"]: s for s in (await (await client.get("/api/security")).get_json())["systems"]}
    assert systems["subprocess_sandbox"]["active"] is False
    assert systems["subprocess_sandbox"]["config"]["mode"] == "deny"
