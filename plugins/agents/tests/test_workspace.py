"""Workspace files (safe paths, symlinks, limits) and uploads (multipart and raw, limits, retrieval)."""

from __future__ import annotations

import base64
import hashlib
import os
import uuid

import pytest


async def test_write_read_list_delete(client, spawn, agents_kernel):
    agent_id = await spawn(client, "filer")
    root = agents_kernel.home / "workspaces" / "agents" / "filer"
    response = await client.put(f"/api/agents/{agent_id}/files/notes/todo.md", json={"content": "# todo\n- one"})
    assert response.status_code == 200
    assert await response.get_json() == {"status": "created", "agent_id": agent_id, "name": "notes/todo.md", "size": 12}
    assert (root / "notes" / "todo.md").read_text() == "# todo\n- one"
    again = await client.put(f"/api/agents/{agent_id}/files/notes/todo.md", json={"content": "done"})
    assert (await again.get_json())["status"] == "updated"
    binary = bytes(range(256))
    await client.put(f"/api/agents/{agent_id}/files/blob.bin",
                     json={"content": base64.b64encode(binary).decode(), "encoding": "base64"})
    assert (root / "blob.bin").read_bytes() == binary
    file = await (await client.get(f"/api/agents/{agent_id}/files/notes/todo.md")).get_json()
    assert file["content"] == "done" and file["encoding"] == "utf-8" and file["size"] == 4
    blob = await (await client.get(f"/api/agents/{agent_id}/files/blob.bin")).get_json()
    assert blob["encoding"] == "base64" and base64.b64decode(blob["content"]) == binary
    listing = await (await client.get(f"/api/agents/{agent_id}/files")).get_json()
    assert [f["name"] for f in listing["files"]] == ["blob.bin", "notes/todo.md"] and listing["total"] == 2
    fresh = await spawn(client, "fresh")  # no workspace folder yet: an empty listing, 404 for files
    assert (await (await client.get(f"/api/agents/{fresh}/files")).get_json())["files"] == []
    assert (await client.get(f"/api/agents/{fresh}/files/x.txt")).status_code == 404
    response = await client.delete(f"/api/agents/{agent_id}/files/notes/todo.md")
    assert await response.get_json() == {"status": "deleted", "agent_id": agent_id, "name": "notes/todo.md"}
    assert not (root / "notes" / "todo.md").exists()
    assert (await client.get(f"/api/agents/{agent_id}/files/notes/todo.md")).status_code == 404
    assert (await client.delete(f"/api/agents/{agent_id}/files/notes/todo.md")).status_code == 404
    assert (await client.delete(f"/api/agents/{agent_id}/files/notes")).status_code == 400  # a folder
    assert (await client.get(f"/api/agents/{agent_id}/files/notes")).status_code == 400


@pytest.mark.parametrize(
    "path",
    ["..%2F..%2Fconfig.toml", "a/..%2F..%2Fx", "a%00b", "..", "C:%5Cwindows", "a%5C..%5C..%5Cx", "%5Cetc%5Cpasswd",
     "x%01y", "a/b/../../../x"],
)
async def test_traversal_absolute_and_nul_are_400(client, spawn, agents_kernel, path):
    agent_id = await spawn(client, "jail")
    for method in ("GET", "PUT", "DELETE"):
        kwargs = {"json": {"content": "pwned"}} if method == "PUT" else {}
        response = await client.open(f"/api/agents/{agent_id}/files/{path}", method=method, **kwargs)
        assert response.status_code == 400, (method, path, await response.get_data(as_text=True))
        assert (await response.get_json())["code"] == "invalid_path"
    assert not any(p.read_bytes() == b"pwned" for p in agents_kernel.home.rglob("*") if p.is_file())


async def test_leading_slash_never_leaves_the_workspace(client, spawn, agents_kernel):
    # "//" matches no route (a JSON 404): "/etc/passwd" cannot reach a handler.
    agent_id = await spawn(client, "rooted")
    response = await client.get(f"/api/agents/{agent_id}/files//etc/passwd")
    assert response.status_code == 404 and (await response.get_json())["code"] == "not_found"
    followed = await client.get(f"/api/agents/{agent_id}/files/etc/passwd")
    assert followed.status_code == 404 and (await followed.get_json())["code"] == "file_not_found"


async def test_symlinks_that_escape_are_refused(client, spawn, agents_kernel, tmp_path):
    agent_id = await spawn(client, "linked")
    from librefang_agents.api import ensure_workspace, registry

    root = await ensure_workspace(agents_kernel, await registry(agents_kernel).get(agent_id))
    assert root == agents_kernel.home / "workspaces" / "agents" / "linked" and root.is_dir()
    assert oct(root.stat().st_mode & 0o777) == "0o700"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("top secret")
    os.symlink(outside / "secret.txt", root / "leak.txt")
    os.symlink(outside, root / "door")
    (root / "inner.txt").write_text("fine")
    os.symlink(root / "inner.txt", root / "alias.txt")
    for path in ("leak.txt", "door/secret.txt"):
        assert (await client.get(f"/api/agents/{agent_id}/files/{path}")).status_code == 400
        response = await client.put(f"/api/agents/{agent_id}/files/{path}", json={"content": "overwrite"})
        assert response.status_code == 400
        assert (await client.delete(f"/api/agents/{agent_id}/files/{path}")).status_code == 400
    assert (await client.put(f"/api/agents/{agent_id}/files/door/new.txt", json={"content": "x"})).status_code == 400
    assert (outside / "secret.txt").read_text() == "top secret" and not (outside / "new.txt").exists()
    # a symlink that stays inside the workspace is fine to read
    assert (await (await client.get(f"/api/agents/{agent_id}/files/alias.txt")).get_json())["content"] == "fine"
    names = [f["name"] for f in (await (await client.get(f"/api/agents/{agent_id}/files")).get_json())["files"]]
    assert names == ["inner.txt"]  # symlinks are not listed


async def test_file_size_and_workspace_quota(start_agents, spawn):
    _kernel, client = await start_agents(
        config="[agents]\nmax_workspace_file_bytes = 2048\nmax_workspace_bytes = 5000\nmax_workspace_entries = 10\n"
    )
    agent_id = await spawn(client, "small")
    response = await client.put(f"/api/agents/{agent_id}/files/big.txt", json={"content": "x" * 2049})
    assert response.status_code == 413 and (await response.get_json())["code"] == "file_too_large"
    for i in range(2):
        ok = await client.put(f"/api/agents/{agent_id}/files/f{i}.txt", json={"content": "x" * 2000})
        assert ok.status_code == 200
    response = await client.put(f"/api/agents/{agent_id}/files/f2.txt", json={"content": "x" * 2000})
    assert response.status_code == 413 and (await response.get_json())["code"] == "workspace_full"
    # replacing a file counts only the difference
    assert (await client.put(f"/api/agents/{agent_id}/files/f1.txt", json={"content": "y" * 2048})).status_code == 200
    for bad in ({"content": "x", "encoding": "latin-1"}, {"content": "@@@", "encoding": "base64"}, {"text": "x"}, {}):
        response = await client.put(f"/api/agents/{agent_id}/files/ok.txt", json=bad)
        assert response.status_code == 400, bad


async def test_upload_multipart_and_raw(client, spawn, agents_kernel):
    from quart.datastructures import FileStorage

    agent_id = await spawn(client, "uploader")
    payload = b"\x89PNG\r\n\x1a\n" + os.urandom(1000)
    import io

    response = await client.post(
        f"/api/agents/{agent_id}/upload",
        files={"file": FileStorage(io.BytesIO(payload), filename="../../pic.png", content_type="image/png")},
    )
    assert response.status_code == 200, await response.get_data(as_text=True)
    meta = await response.get_json()
    assert meta["filename"] == "pic.png" and meta["content_type"] == "image/png" and meta["size"] == len(payload)
    assert meta["sha256"] == hashlib.sha256(payload).hexdigest() and meta["url"] == f"/api/uploads/{meta['file_id']}"
    served = await client.get(meta["url"])
    assert served.status_code == 200 and await served.get_data() == payload
    assert served.mimetype == "image/png" and served.headers["Content-Disposition"].startswith("inline")
    raw = await client.post(f"/api/agents/{agent_id}/upload", data=b"<html>hi</html>",
                            headers={"Content-Type": "text/html; charset=utf-8", "X-Filename": "page.html"})
    assert raw.status_code == 200
    raw_meta = await raw.get_json()
    assert raw_meta["content_type"] == "text/html" and raw_meta["filename"] == "page.html"
    page = await client.get(raw_meta["url"])
    assert page.headers["Content-Disposition"].startswith("attachment")  # never rendered inline
    # uploads go with their agent
    await client.delete(f"/api/agents/{agent_id}")
    assert (await client.get(meta["url"])).status_code == 404
    assert not (agents_kernel.home / "data" / "uploads" / meta["file_id"]).exists()


async def test_upload_limits_and_bad_requests(start_agents, spawn):
    _kernel, client = await start_agents(config="max_upload_size_bytes = 2048\n")
    agent_id = await spawn(client, "limited")
    too_big = await client.post(f"/api/agents/{agent_id}/upload", data=b"x" * 2049,
                                headers={"Content-Type": "application/octet-stream", "X-Filename": "a.bin"})
    assert too_big.status_code == 413 and (await too_big.get_json())["code"] == "upload_too_large"
    import io

    from quart.datastructures import FileStorage

    too_big_part = await client.post(
        f"/api/agents/{agent_id}/upload",
        files={"file": FileStorage(io.BytesIO(b"y" * 2100), filename="big.bin", content_type="application/octet-stream")},
    )
    assert too_big_part.status_code == 413 and (await too_big_part.get_json())["code"] == "upload_too_large"
    empty = await client.post(f"/api/agents/{agent_id}/upload", data=b"",
                              headers={"Content-Type": "application/octet-stream"})
    assert empty.status_code == 400
    no_file = await client.post(f"/api/agents/{agent_id}/upload", form={"note": "no file here"})
    assert no_file.status_code == 400 and (await no_file.get_json())["code"] == "missing_file"
    multipart = b'--XyZ\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n--XyZ--\r\n'
    no_part = await client.post(f"/api/agents/{agent_id}/upload", data=multipart,
                                headers={"Content-Type": "multipart/form-data; boundary=XyZ"})
    assert no_part.status_code == 400 and (await no_part.get_json())["code"] == "missing_file"
    odd = await client.post(f"/api/agents/{agent_id}/upload", data=b"abc",
                            headers={"Content-Type": "not a type", "X-Filename": "\x01evil\x7f"})
    assert odd.status_code == 200
    assert (await odd.get_json())["content_type"] == "application/octet-stream"
    assert (await odd.get_json())["filename"] == "evil"
    assert (await client.get("/api/uploads/not-a-uuid")).status_code == 400
    unknown = await client.get(f"/api/uploads/{uuid.uuid4()}")
    assert unknown.status_code == 404 and (await unknown.get_json())["code"] == "upload_not_found"


async def test_workspace_of_creates_the_folder_on_first_use(client, spawn, agents_kernel):
    from librefang_agents.api import registry, workspace_of

    agent_id = await spawn(client, "lazy")
    record = await registry(agents_kernel).get(agent_id)
    folder = agents_kernel.home / "workspaces" / "agents" / "lazy"
    assert not folder.exists()
    assert workspace_of(agents_kernel, record) == folder and folder.is_dir()
