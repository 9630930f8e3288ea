"""Load from a local folder or the Hugging Face Hub, and fail in one sentence when the Hub is out of reach.

The Hub client retries for about a minute before it gives up offline, and its errors name its own internals. A
script that loads a model, a tokenizer, a teacher and a dataset would print four such tracebacks; these helpers
probe the endpoint once per load (seconds) and stop with what to do instead.
"""
from __future__ import annotations

import os
import socket
from typing import Callable, TypeVar
from urllib.parse import urlparse

__all__ = ["hub_reachable", "looks_local", "from_hub_or_local", "check_folder_links", "resolves_inside"]

Loaded = TypeVar("Loaded")


def hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connection to the Hub endpoint (``HF_ENDPOINT`` or huggingface.co)."""
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def looks_local(name: str) -> bool:
    """A path the user meant as a folder (``./x``, ``../x``, ``/x``, ``~/x``, ``a/b/c``), not a Hub id
    (``org/name``)."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def from_hub_or_local(what: str, name: str, load: Callable[[], Loaded], offline_hint: str) -> Loaded:
    """Run ``load()``. A local path must exist; a Hub id needs the Hub: when it is unreachable (and
    ``HF_HUB_OFFLINE`` does not ask for the local cache), or loading fails, stop with one sentence that ends with
    ``offline_hint`` (what to pass instead)."""
    if not os.path.exists(name) and looks_local(name):
        raise ValueError(f"{what} folder {name!r} does not exist")
    if os.path.isdir(name):
        check_folder_links(name)
    if not os.path.exists(name) and not os.environ.get("HF_HUB_OFFLINE") and not hub_reachable():
        raise SystemExit(f"error: the Hugging Face Hub is unreachable, so {what} {name!r} cannot be downloaded; "
                         f"offline, {offline_hint} (or set HF_HUB_OFFLINE=1 to use the local cache).")
    try:
        return load()
    except Exception as err:  # the Hub client raises many types when offline; a local path re-raises as is
        if os.path.exists(name):
            raise
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SystemExit(f"error: could not load {what} {name!r} from the Hugging Face Hub "
                         f"(is it unreachable? {first_line[:160]}); offline, {offline_hint}.") from None


def check_folder_links(folder: str) -> None:
    """Refuse a local model folder whose files resolve (through symbolic links) outside it: a folder someone hands
    over must not make the script read other files of the machine. The Hub cache's own layout is allowed (a
    ``snapshots/<revision>`` folder whose files link into the same repository's ``blobs``)."""
    root = os.path.realpath(folder)
    allowed = [root]
    if os.path.basename(os.path.dirname(root)) == "snapshots":
        allowed.append(os.path.join(os.path.dirname(os.path.dirname(root)), "blobs"))
    for directory, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(directory, name)
            if not any(resolves_inside(path, base) for base in allowed):
                raise ValueError(f"{path} resolves to {os.path.realpath(path)!r}, outside the folder {folder!r}: "
                                 "refusing to read it")


def resolves_inside(path: str, folder: str) -> bool:
    """Whether ``path``, links followed, is ``folder`` or lies inside it."""
    root = os.path.realpath(folder)
    return os.path.commonpath([root, os.path.realpath(path)]) == root
