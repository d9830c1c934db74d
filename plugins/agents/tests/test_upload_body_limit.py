"""The upload route's own request body limit (``max_upload_size_bytes``), above the global 8 MiB."""

from __future__ import annotations

import hashlib

MIB = 1024 * 1024


async def test_upload_larger_than_the_global_body_limit_is_accepted(start_agents, spawn):
    _kernel, client = await start_agents()  # defaults: 8 MiB per request body, 10 MiB per upload
    agent_id = await spawn(client, "big-uploader")
    payload = b"z" * (9 * MIB)
    response = await client.post(f"/api/agents/{agent_id}/upload", data=payload,
                                 headers={"Content-Type": "application/octet-stream", "X-Filename": "big.bin"})
    assert response.status_code == 200, await response.get_data(as_text=True)
    meta = await response.get_json()
    assert meta["size"] == len(payload) and meta["sha256"] == hashlib.sha256(payload).hexdigest()
    # The same body on another route still meets the global limit.
    other = await client.post("/api/agents", data=payload, headers={"Content-Type": "application/json"})
    assert other.status_code == 413 and (await other.get_json())["code"] == "payload_too_large"


async def test_upload_over_the_upload_limit_is_413_declared_or_streamed(start_agents, spawn):
    _kernel, client = await start_agents(config="max_upload_size_bytes = 16384\nmax_request_body_bytes = 4096\n")
    agent_id = await spawn(client, "small-uploader")
    url = f"/api/agents/{agent_id}/upload"
    headers = {"Content-Type": "application/octet-stream", "X-Filename": "a.bin"}
    fits = await client.post(url, data=b"a" * 10_000, headers=headers)  # above 4096, within 16384
    assert fits.status_code == 200, await fits.get_data(as_text=True)
    limit = 16384 + 64 * 1024  # the upload limit plus the multipart allowance
    declared = await client.post(url, data=b"b" * (limit + 1), headers=headers)
    body = await declared.get_json()
    assert declared.status_code == 413 and body["code"] == "payload_too_large" and str(limit) in body["error"]
    assert body["request_id"] == declared.headers["x-request-id"]
    loopback = {"client": ("127.0.0.1", 5)}
    async with client.request(url, method="POST", headers=headers, scope_base=loopback) as connection:  # chunked
        for _ in range(limit // 8192 + 2):
            await connection.send(b"c" * 8192)
        await connection.send_complete()
    streamed = await connection.as_response()
    assert streamed.status_code == 413 and (await streamed.get_json())["code"] == "payload_too_large"
