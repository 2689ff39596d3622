"""Fetch the pinned MicroPython-only modules the firmware needs into build/mpylib.

`micropython-umqtt.simple` is an sdist without setup.py, so pip refuses to install
it. We ask the package index pip is configured with (PEP 691 JSON or PEP 503 HTML
simple API; never a hard-coded host), download the pinned file, check its sha256
and unpack only the module files.

Note for the MQTT work: umqtt.simple 1.3.4 does `import ussl` on its TLS path;
current MicroPython has `ssl`/`tls` instead, so the firmware ships a `ussl`
compatibility module.
"""

from __future__ import annotations

import hashlib
import html.parser
import io
import json
import subprocess
import sys
import tarfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from host_tools.runtime.paths import MPYLIB


@dataclass(frozen=True)
class PinnedModule:
    project: str  # name on the index
    version: str
    filename: str
    sha256: str
    members: dict[str, str]  # path inside the archive -> path under build/mpylib


PINNED = [
    PinnedModule(
        project="micropython-umqtt.simple",
        version="1.3.4",
        filename="micropython-umqtt.simple-1.3.4.tar.gz",
        sha256="b6a2520239e3992c63a7de9370ee9b3d9d27819a90359c521f1c0f7ccab8d12f",
        members={"umqtt/simple.py": "umqtt/simple.py"},
    ),
]

STAMP = MPYLIB / ".fetched-stamp"


class FetchError(RuntimeError):
    pass


def configured_indexes() -> list[str]:
    """The index URLs pip would use here: its configured index-url (or pip's own default) and extras."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    ).stdout
    index, extras = None, []
    for line in out.splitlines():
        key, _, value = line.partition("=")
        value = value.strip().strip("'\"")
        name = key.split(".")[-1]
        if name == "index-url":
            index = value
        elif name == "extra-index-url":
            extras.extend(value.split())
    import os

    index = os.environ.get("PIP_INDEX_URL", index)
    extras = os.environ.get("PIP_EXTRA_INDEX_URL", " ".join(extras)).split()
    if index is None:
        from pip._internal.models.index import PyPI  # pip's own default, not ours

        index = PyPI.simple_url
    return [index] + extras


def _normalise(project: str) -> str:
    import re

    return re.sub(r"[-_.]+", "-", project).lower()


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href = None

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self._href = dict(attrs).get("href")

    def handle_data(self, data):
        if self._href is not None:
            self.links.append((data.strip(), self._href))
            self._href = None


def _find_file_url(index: str, project: str, filename: str) -> str | None:
    page = index.rstrip("/") + "/" + _normalise(project) + "/"
    if page.startswith("file:"):
        path = Path(urllib.parse.urlparse(page).path)
        if not path.is_dir():
            return None
    req = urllib.request.Request(
        page, headers={"Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            body = resp.read()
            ctype = resp.headers.get("Content-Type", "") if hasattr(resp, "headers") else ""
    except (OSError, ValueError):
        return None
    if "json" in ctype:
        for f in json.loads(body)["files"]:
            if f["filename"] == filename:
                return urllib.parse.urljoin(page, f["url"])
        return None
    parser = _Links()
    parser.feed(body.decode("utf-8", "replace"))
    for text, href in parser.links:
        if text == filename:
            return urllib.parse.urljoin(page, href)
    return None


def fetch_one(mod: PinnedModule, dest: Path = MPYLIB) -> list[Path]:
    tried = []
    for index in configured_indexes():
        url = _find_file_url(index, mod.project, mod.filename)
        tried.append(index)
        if url is None:
            continue
        with urllib.request.urlopen(url, timeout=120) as resp:
            data = resp.read()
        digest = hashlib.sha256(data).hexdigest()
        if digest != mod.sha256:
            raise FetchError(f"{mod.filename}: sha256 {digest} does not match the pin {mod.sha256}")
        written = []
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            names = {m.name.split("/", 1)[1]: m for m in tar.getmembers() if "/" in m.name}
            for member, target in mod.members.items():
                if member not in names:
                    raise FetchError(f"{mod.filename}: no member {member}")
                out = dest / target
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(tar.extractfile(names[member]).read())
                written.append(out)
        return written
    raise FetchError(f"{mod.project}=={mod.version}: {mod.filename} not found on any configured index {tried}")


def fetch_all(force: bool = False) -> None:
    if STAMP.exists() and not force:
        return
    MPYLIB.mkdir(parents=True, exist_ok=True)
    for mod in PINNED:
        for path in fetch_one(mod):
            print(f"fetched {mod.project}=={mod.version} -> {path}")
    STAMP.write_text("\n".join(f"{m.project}=={m.version} sha256:{m.sha256}" for m in PINNED) + "\n")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["fetch"]:
        print("usage: python -m host_tools.runtime.deps fetch [--force]", file=sys.stderr)
        return 2
    try:
        fetch_all(force="--force" in argv)
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
