"""A minimal headless-Chromium driver over the DevTools protocol (CDP), for tests.

One chromium process with a throwaway profile, one DevTools websocket (aiohttp's client)
in flat-session mode, and a ``Tab`` per page target::

    async with Browser.start(tmp_path) as browser:
        tab = await browser.new_tab()
        await tab.navigate("http://127.0.0.1:7860/")
        await tab.click_button("Generate")
        await tab.wait_for("!!document.querySelector('audio[src]')", timeout=20)
        await tab.screenshot(tmp_path / "page.png")

Everything has a deadline: a command that gets no answer raises ``TimeoutError`` and
``close()`` kills chromium if it does not exit. Chromium resolves no host names but
127.0.0.1 and localhost (``--host-resolver-rules``), so a page cannot reach the network.
Each tab records the CDP events of its session (``Tab.events``), e.g. ``Network.*`` after
``await tab.send("Network.enable")``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from support import find_binary, stop_process

from gatekeeper.cli.procs import spawn

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--mute-audio",
    "--window-size=1280,1024",
    # Only loopback resolves: no request of the page (or of chromium) leaves the box.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE localhost",
]


def _spawn(profile: Path) -> tuple[subprocess.Popen[bytes], Any]:
    """Chromium on a fresh profile, DevTools on a port it picks; its output to a file."""
    chromium = find_binary("chromium", "chromium-browser", "google-chrome")
    profile.mkdir(parents=True)
    log = open(profile.with_suffix(".log"), "wb")  # noqa: SIM115 - closed in Browser.close()
    argv = [chromium, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0"]
    proc: subprocess.Popen[bytes] = spawn([*argv, "about:blank"], stdout=log)
    return proc, log


def _read_words(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


class CDPError(RuntimeError):
    """A DevTools command answered with an error, or a page script threw."""


class Browser:
    """A chromium process and its DevTools connection."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Any, timeout: float) -> None:
        self.proc = proc
        self._log = log
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._tabs: dict[str, Tab] = {}

    @classmethod
    @contextlib.asynccontextmanager
    async def start(cls, tmp_path: Path, *, timeout: float = 15.0) -> AsyncIterator[Browser]:
        """Launch chromium, connect to it, and close it (always) when the block ends."""
        browser = await cls.launch(tmp_path, timeout=timeout)
        try:
            yield browser
        finally:
            await browser.close()

    @classmethod
    async def launch(cls, tmp_path: Path, *, timeout: float = 15.0) -> Browser:
        profile = tmp_path / f"chromium-profile-{time.monotonic_ns()}"
        proc, log = _spawn(profile)
        browser = cls(proc, log, timeout)
        try:
            await browser._connect(profile / "DevToolsActivePort")
        except BaseException:
            await browser.close()
            raise
        return browser

    async def _connect(self, port_file: Path) -> None:
        # Chromium writes "<port>\n/devtools/browser/<id>" once DevTools listens.
        deadline = time.monotonic() + self.timeout
        while True:
            lines = _read_words(port_file)
            if len(lines) == 2:
                break
            if self.proc.poll() is not None:
                raise CDPError(f"chromium exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError("chromium wrote no DevToolsActivePort")
            await asyncio.sleep(0.05)
        port, path = lines
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(
            f"ws://127.0.0.1:{port}{path}",
            max_msg_size=0,  # screenshots arrive as one large base64 message
            timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for msg in self._ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                if "id" in data:
                    fut = self._pending.pop(data["id"], None)
                    if fut is not None and not fut.done():
                        fut.set_result(data)
                elif (tab := self._tabs.get(data.get("sessionId", ""))) is not None:
                    tab.events.append(data)
        finally:
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(CDPError("DevTools connection closed"))
            self._pending.clear()

    async def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session_id: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """One CDP command; its ``result``, or ``CDPError`` / ``TimeoutError``."""
        if self._ws is None or self._ws.closed:
            raise CDPError("DevTools connection closed")
        msg_id = next(self._ids)
        message: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session_id is not None:
            message["sessionId"] = session_id
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = fut
        try:
            await self._ws.send_str(json.dumps(message))
            answer = await asyncio.wait_for(fut, timeout or self.timeout)
        finally:
            self._pending.pop(msg_id, None)
        if "error" in answer:
            raise CDPError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    async def new_tab(self, url: str = "about:blank") -> Tab:
        """A new page target (a second tab shares cookies and storage with the first)."""
        target = await self.send("Target.createTarget", {"url": url})
        attached = await self.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        tab = Tab(self, target["targetId"], attached["sessionId"])
        self._tabs[tab.session_id] = tab
        await tab.send("Page.enable")
        await tab.send("Runtime.enable")
        return tab

    async def close(self) -> None:
        """Ask chromium to quit, kill it if it does not, and drop the connection."""
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(Exception):
                await self.send("Browser.close", timeout=3.0)
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), 3.0)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._session is not None:
            await self._session.close()
        await asyncio.to_thread(stop_process, self.proc, 5.0)
        self._log.close()


class Tab:
    """One page, driven through its flat CDP session."""

    def __init__(self, browser: Browser, target_id: str, session_id: str) -> None:
        self.browser = browser
        self.target_id = target_id
        self.session_id = session_id
        self.events: list[dict[str, Any]] = []

    async def send(
        self, method: str, params: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> dict[str, Any]:
        return await self.browser.send(method, params, session_id=self.session_id, timeout=timeout)

    async def navigate(self, url: str, *, timeout: float = 20.0) -> None:
        """Load ``url`` and wait until the document has finished loading."""
        result = await self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise CDPError(f"navigate {url}: {result['errorText']}")
        await self.wait_for(
            f"location.href.startsWith({json.dumps(url)}) && document.readyState === 'complete'",
            timeout=timeout,
        )

    async def evaluate(self, js: str, *, timeout: float | None = None) -> Any:
        """The value of a JS expression (awaited when it is a promise), as JSON."""
        result = await self.send(
            "Runtime.evaluate",
            {"expression": js, "returnByValue": True, "awaitPromise": True},
            timeout=timeout,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise CDPError(f"{js[:80]!r} threw: {text}")
        return result["result"].get("value")

    async def click_button(self, text: str, *, timeout: float = 10.0) -> None:
        """Click the ``<button>`` whose text is ``text`` (or failing that, contains it).

        Waits for it: Gradio renders its buttons before their (translated) labels."""
        js = f"""(() => {{
            const want = {json.dumps(text)};
            const buttons = [...document.querySelectorAll('button')];
            const b = buttons.find(b => b.innerText.trim() === want)
                || buttons.find(b => b.innerText.includes(want));
            if (!b) return false;
            b.click();
            return true;
        }})()"""
        try:
            await self.wait_for(js, timeout=timeout)
        except TimeoutError:
            raise CDPError(f"no <button> with text {text!r} after {timeout} s") from None

    async def wait_for(self, js_predicate: str, *, timeout: float = 10.0) -> Any:
        """Poll a JS expression until it is truthy; its value, or ``TimeoutError``."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(CDPError):  # mid-navigation the context can vanish
                value = await self.evaluate(js_predicate, timeout=max(1.0, timeout))
                if value:
                    return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"not true after {timeout} s: {js_predicate}")
            await asyncio.sleep(0.1)

    async def screenshot(self, path: Path) -> Path:
        """A PNG of the viewport."""
        import base64

        result = await self.send("Page.captureScreenshot", {"format": "png"}, timeout=30.0)
        await asyncio.to_thread(path.write_bytes, base64.b64decode(result["data"]))
        return path

    async def close(self) -> None:
        await self.browser.send("Target.closeTarget", {"targetId": self.target_id})
        self.browser._tabs.pop(self.session_id, None)
