"""Is the Hugging Face Hub reachable? One probe per process, made before the hub libraries load.

Without network, huggingface_hub retries for ~25 s per lookup. :func:`go_offline_if_unreachable`
opens one TCP connection to the hub endpoint and, when it fails, sets ``HF_HUB_OFFLINE=1`` so
every later lookup fails at once: `mtrain check` then reports hub sources as "not verified
offline", and `mtrain run` / `mtrain eval` fail fast with a clear message. The libraries read
``HF_HUB_OFFLINE`` when they are imported, which is why the CLI probes before it loads a verb.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

_HUB_STATE: dict[str, bool] = {}


def hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connect to the hub endpoint (cached). Must run before huggingface_hub is imported
    if its answer is to switch the process to offline mode."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    if "ok" not in _HUB_STATE:
        endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
        port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
        try:
            socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
            _HUB_STATE["ok"] = True
        except OSError:
            _HUB_STATE["ok"] = False
    return _HUB_STATE["ok"]


def go_offline_if_unreachable() -> bool:
    """Switch to offline mode when the hub does not answer, so hub look-ups fail at once instead of
    retrying for half a minute. Returns whether the hub is reachable."""
    ok = hub_reachable()
    if not ok:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"
    return ok
