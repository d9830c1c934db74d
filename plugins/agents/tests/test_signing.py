"""Signed manifests with real Ed25519 key pairs: verify, reject untrusted/tampered, the CLI signer."""

from __future__ import annotations

import base64
import json

import pytest
from click.testing import CliRunner
from librefang_agents.cli import agent as agent_cli
from librefang_agents.signing import SignatureError, parse_trusted_signers, sign_manifest, verify_envelope
from nacl.signing import SigningKey

MANIFEST = 'name = "signed-agent"\ndescription = "from a trusted author"\n[capabilities]\ntools = ["file_read"]\n'


def config_trusting(*keys: SigningKey, extra: str = "") -> str:
    listed = ", ".join(f'"{k.verify_key.encode().hex()}"' for k in keys)
    return f"trusted_manifest_signers = [{listed}]\n{extra}"


def test_sign_and_verify_with_a_real_key_pair():
    key = SigningKey.generate()
    envelope = sign_manifest(MANIFEST, key, "dev@example.org")
    verified = verify_envelope(json.dumps(envelope), [key.verify_key.encode()])
    assert verified.manifest == MANIFEST and verified.signer_id == "dev@example.org"
    assert verified.signer_public_key == key.verify_key.encode().hex()


def test_reference_byte_array_encoding_is_accepted():
    key = SigningKey.generate()
    envelope = sign_manifest(MANIFEST, key)
    envelope["signature"] = list(bytes.fromhex(envelope["signature"]))
    envelope["signer_public_key"] = list(key.verify_key.encode())
    assert verify_envelope(envelope, [key.verify_key.encode()]).manifest == MANIFEST


@pytest.mark.parametrize("case", ["tampered", "wrong_key", "untrusted", "nobody_trusted", "garbage", "short_sig"])
def test_verification_failures(case):
    key, other = SigningKey.generate(), SigningKey.generate()
    envelope = sign_manifest(MANIFEST, key)
    trusted = [key.verify_key.encode()]
    if case == "tampered":
        envelope["manifest"] = MANIFEST.replace("file_read", "shell_exec")
    elif case == "wrong_key":  # key swapped for a trusted one that did not sign
        envelope["signer_public_key"] = other.verify_key.encode().hex()
        trusted.append(other.verify_key.encode())
    elif case == "untrusted":
        trusted = [other.verify_key.encode()]
    elif case == "nobody_trusted":
        trusted = []
    elif case == "garbage":
        envelope = "{not json"
    elif case == "short_sig":
        envelope["signature"] = "abcd"
    with pytest.raises(SignatureError):
        verify_envelope(envelope, trusted)


def test_trusted_signers_accept_hex_and_base64_and_refuse_junk():
    key = SigningKey.generate().verify_key.encode()
    assert parse_trusted_signers([key.hex(), base64.b64encode(key).decode()]) == [key, key]
    with pytest.raises(ValueError, match=r"trusted_manifest_signers\[1\]"):
        parse_trusted_signers([key.hex(), "not-a-key"])


async def test_spawn_with_a_trusted_signed_manifest(start_agents):
    key = SigningKey.generate()
    _kernel, client = await start_agents(config=config_trusting(key))
    envelope = json.dumps(sign_manifest(MANIFEST, key, "dev"))
    response = await client.post("/api/agents", json={"signed_manifest": envelope})
    assert response.status_code == 201
    agent_id = (await response.get_json())["agent_id"]
    detail = await (await client.get(f"/api/agents/{agent_id}")).get_json()
    assert detail["name"] == "signed-agent" and detail["signed_by"] == key.verify_key.encode().hex()
    # manifest_toml equal to the signed text (after trimming) is accepted too; the object form works
    response = await client.post(
        "/api/agents",
        json={"manifest_toml": "\n" + MANIFEST + "\n", "signed_manifest": sign_manifest(MANIFEST, key),
              "name": "signed-two"},
    )
    assert response.status_code == 201


@pytest.mark.parametrize("case", ["untrusted", "tampered", "mismatch", "bad_json"])
async def test_bad_or_untrusted_signature_is_403(start_agents, case):
    key, stranger = SigningKey.generate(), SigningKey.generate()
    _kernel, client = await start_agents(config=config_trusting(key))
    body: dict = {}
    if case == "untrusted":
        body["signed_manifest"] = json.dumps(sign_manifest(MANIFEST, stranger))
    elif case == "tampered":
        envelope = sign_manifest(MANIFEST, key)
        envelope["manifest"] = MANIFEST.replace('["file_read"]', '["*"]')
        body["signed_manifest"] = json.dumps(envelope)
    elif case == "mismatch":
        body["signed_manifest"] = json.dumps(sign_manifest(MANIFEST, key))
        body["manifest_toml"] = MANIFEST + 'tags = ["sneaky"]\n'
    else:
        body["signed_manifest"] = "{oops"
    response = await client.post("/api/agents", json=body)
    assert response.status_code == 403
    payload = await response.get_json()
    assert payload["code"] in {"signature_invalid", "signature_mismatch"}
    listing = await (await client.get("/api/agents?q=signed")).get_json()
    assert listing["total"] == 0  # nothing was spawned


async def test_signed_manifest_without_configured_signers_is_403(client):
    envelope = json.dumps(sign_manifest(MANIFEST, SigningKey.generate()))
    response = await client.post("/api/agents", json={"signed_manifest": envelope})
    assert response.status_code == 403
    assert "trusted_manifest_signers" in (await response.get_json())["error"]


async def test_require_signed_manifests(start_agents):
    key = SigningKey.generate()
    _kernel, client = await start_agents(config=config_trusting(key, extra="[agents]\nrequire_signed_manifests = true\n"))
    response = await client.post("/api/agents", json={"manifest_toml": MANIFEST})
    assert response.status_code == 403 and (await response.get_json())["code"] == "signature_required"
    response = await client.post("/api/agents", json={"signed_manifest": sign_manifest(MANIFEST, key)})
    assert response.status_code == 201
    agent_id = (await response.get_json())["agent_id"]
    # a whole-manifest update must be signed too
    response = await client.put(f"/api/agents/{agent_id}/update", json={"manifest_toml": MANIFEST})
    assert response.status_code == 403
    changed = MANIFEST.replace("from a trusted author", "updated")
    response = await client.put(f"/api/agents/{agent_id}/update", json={"signed_manifest": sign_manifest(changed, key)})
    assert response.status_code == 200
    detail = await (await client.get(f"/api/agents/{agent_id}")).get_json()
    assert detail["description"] == "updated" and detail["signed_by"] == key.verify_key.encode().hex()


async def test_invalid_trusted_signers_config_fails_the_plugin(make_kernel):
    import librefang_agents.plugin as agents_plugin

    kernel = await make_kernel(plugins={"agents": agents_plugin}, load_entry_points=False,
                               config='trusted_manifest_signers = ["nope"]\n')
    error = kernel.plugins.records["agents"].error
    assert error and "trusted_manifest_signers[0]" in error


def test_cli_keygen_and_sign_produce_an_envelope_the_daemon_accepts(tmp_path):
    runner = CliRunner()
    key_file = tmp_path / "signer.key"
    result = runner.invoke(agent_cli, ["keygen", str(key_file)])
    assert result.exit_code == 0, result.output
    public = result.output.strip()
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert runner.invoke(agent_cli, ["keygen", str(key_file)]).exit_code != 0  # never overwrites a key
    manifest = tmp_path / "agent.toml"
    manifest.write_text(MANIFEST)
    result = runner.invoke(agent_cli, ["sign", str(manifest), "--key", str(key_file), "--signer-id", "ci"])
    assert result.exit_code == 0, result.output
    envelope = json.loads(result.output)
    verified = verify_envelope(envelope, [bytes.fromhex(public)])
    assert verified.manifest == MANIFEST and verified.signer_id == "ci"
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[model]\ntemperature = 9\n')
    result = runner.invoke(agent_cli, ["sign", str(bad), "--key", str(key_file)])
    assert result.exit_code != 0 and "model.temperature" in result.output
