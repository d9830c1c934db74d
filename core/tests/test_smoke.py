async def test_health_is_public_and_minimal(client):
    response = await client.get("/api/health")
    assert response.status_code == 200
    body = await response.get_json()
    assert body["status"] == "ok"
    assert set(body) == {"status", "version"}
    assert response.headers["x-request-id"]


async def test_api_v1_prefix_serves_same_route(client):
    response = await client.get("/api/v1/health")
    assert response.status_code == 200


async def test_unknown_route_is_json_404(client):
    response = await client.get("/api/no-such-route")
    assert response.status_code == 404
    body = await response.get_json()
    assert body["code"] == "not_found"
    assert body["request_id"] == response.headers["x-request-id"]
