"""The ``web_fetch`` tool: GET a page and return it as readable text, under the SSRF rules (brief §8.8).

Before any I/O, and again for every redirect: ``http``/``https`` only, no userinfo, blocked host names,
and every resolved address public (IPv4-mapped/NAT64/6to4 IPv6 canonicalised first); link-local,
CGNAT and metadata ranges stay blocked even when ``[runtime] web_fetch_allowed_hosts`` opens private
ones. The connection goes to the address that was checked (no DNS rebinding in between).
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin

from librefang_providers.api import AllowList, SsrfError, check_fetch_url

from librefang_runtime.tools import Tool, ToolContext, ToolError

MAX_REDIRECTS = 5
REDIRECTS = {301, 302, 303, 307, 308}
SKIPPED = {"script", "style", "noscript", "template", "svg", "head"}
BLOCKS = {"p", "div", "br", "li", "ul", "ol", "tr", "table", "section", "article", "header", "footer", "nav",
          "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "hr", "main", "aside", "form", "title"}


class _Text(HTMLParser):
    """Readable text of an HTML document: scripts and styles dropped, blocks on their own lines."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0
        self.title: list[str] = []
        self.in_title = False

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag == "title":
            self.in_title = True
        elif tag in SKIPPED:
            self.skipping += 1
        if tag in BLOCKS:
            self.parts.append("\n")
        if tag == "li":
            self.parts.append("- ")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        elif tag in SKIPPED and self.skipping:
            self.skipping -= 1
        if tag in BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title.append(data)
        elif not self.skipping:
            self.parts.append(data)


def html_to_text(html: str) -> tuple[str, str]:
    """(title, readable text) of an HTML document."""
    parser = _Text()
    parser.feed(html)
    parser.close()
    lines = [re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in "".join(parser.parts).split("\n")]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return " ".join("".join(parser.title).split()), text


async def fetch(client: Any, url: str, allowed: AllowList, *, max_bytes: int, time_limit: float) -> dict[str, Any]:
    """GET ``url`` following at most :data:`MAX_REDIRECTS` redirects, each re-checked; the body is cut at
    ``max_bytes``. :class:`ToolError` for a refused URL or a transport failure."""
    for _ in range(MAX_REDIRECTS + 1):
        try:
            parts, addresses = await check_fetch_url(url, allowed)
        except SsrfError as exc:
            raise ToolError(f"refused: {exc}") from None
        addr = addresses[0]
        host = parts.hostname.rstrip(".")
        port = f":{parts.port}" if parts.port else ""
        pinned = parts._replace(netloc=f"{f'[{addr}]' if addr.version == 6 else addr}{port}").geturl()
        headers = {"Host": host + port, "User-Agent": "LibreFang web_fetch", "Accept": "text/html,text/plain,*/*"}
        extensions = {"sni_hostname": host} if parts.scheme.lower() == "https" else {}
        try:
            async with client.stream("GET", pinned, headers=headers, extensions=extensions, timeout=time_limit,
                                     follow_redirects=False) as response:
                location = response.headers.get("location")
                if response.status_code in REDIRECTS and location:
                    url = urljoin(url, location)
                    continue
                chunks, size, cut = [], 0, False
                async for chunk in response.aiter_bytes():
                    chunks.append(chunk)
                    size += len(chunk)
                    if size >= max_bytes:
                        cut = True
                        break
                body = b"".join(chunks)[:max_bytes]
                return {"url": url, "status": response.status_code, "cut": cut, "body": body,
                        "content_type": response.headers.get("content-type", ""),
                        "charset": response.charset_encoding or "utf-8"}
        except ToolError:
            raise
        except Exception as exc:  # httpx transport errors, bad TLS, timeouts
            raise ToolError(f"fetch failed: {type(exc).__name__}") from None
    raise ToolError(f"more than {MAX_REDIRECTS} redirects")


async def _check_network(context: ToolContext, url: str) -> None:
    """An agent may fetch only hosts its ``capabilities.network`` patterns name (``*`` = any)."""
    from fnmatch import fnmatchcase
    from urllib.parse import urlsplit

    from librefang_agents import api as agents_api

    record = await agents_api.registry(context.kernel).get(context.agent_id)
    patterns = agents_api.effective_capabilities(record.parsed()).network
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        raise ToolError("refused: URL is malformed") from None
    if not any(fnmatchcase(host, p.lower()) or fnmatchcase(f"{host}:{port}", p.lower()) for p in patterns):
        raise ToolError(f"refused: {host!r} is not in this agent's capabilities.network")


async def _web_fetch(data: dict[str, Any], context: ToolContext) -> str:
    runtime = context.kernel.services["runtime"]
    if context.agent_id:
        await _check_network(context, data["url"])
    cfg = runtime.config
    page = await fetch(runtime.web_client(), data["url"], AllowList(cfg.web_fetch_allowed_hosts),
                       max_bytes=cfg.web_fetch_max_bytes, time_limit=cfg.web_fetch_timeout_secs)
    try:
        text = page["body"].decode(page["charset"], errors="replace")
    except LookupError:
        text = page["body"].decode("utf-8", errors="replace")
    title = ""
    if "html" in page["content_type"].lower() or text.lstrip()[:15].lower().startswith(("<!doctype", "<html")):
        title, text = html_to_text(text)
    head = f"URL: {page['url']}\nStatus: {page['status']}\n" + (f"Title: {title}\n" if title else "")
    note = f"\n\n[the page was cut at {cfg.web_fetch_max_bytes} bytes]" if page["cut"] else ""
    return head + "\n" + text + note


def web_tools() -> list[Tool]:
    """The web tools."""
    return [Tool("web_fetch", "Fetch a web page (http/https) and read it as text.", _web_fetch,
                 {"type": "object", "properties": {"url": {"type": "string", "description": "http(s) URL"}},
                  "required": ["url"]})]
