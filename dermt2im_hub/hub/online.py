"""Say early, in one line, when a push cannot reach the Hub.

With HF_HUB_OFFLINE set every Hub request is refused, and the push retries (made for dropped connections) would
spend half a minute before failing with a traceback; a training run would only find out after its last step.
Commands that will push call `require_online` before doing any work; `hub_error_line` turns the errors a Hub
request raises (offline mode, no connection, an HTTP error status) into the line the command line prints.
"""

from __future__ import annotations

import sys

from dermt2im_hub.config import ConfigError


class HubOfflineError(ConfigError):
    """A push was asked for while HF_HUB_OFFLINE is set."""


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def require_online(what: str, later: bool = True) -> None:
    """Raise HubOfflineError when `what` (e.g. "--push-to-hub") needs the Hub and HF_HUB_OFFLINE is set;
    `later`: say that the push can be left out and done afterwards with `dermt2im push`."""
    if hub_offline():
        hint = " (or leave the push out and publish later with `dermt2im push FOLDER --repo-id ORG/NAME`)"
        raise HubOfflineError(f"{what} needs the Hub, but HF_HUB_OFFLINE is set: unset it{hint if later else ''}")


def hub_error_line(error: BaseException) -> str | None:
    """One line for an error raised by a Hub request, or None when `error` is something else. The Hub's own
    messages name the URL and status, never the token."""
    errors = sys.modules.get("huggingface_hub.errors")
    if errors is not None and isinstance(error, errors.OfflineModeIsEnabled):
        return f"cannot reach the Hub: HF_HUB_OFFLINE is set ({error})"
    if errors is not None and isinstance(error, errors.HfHubHTTPError):
        return f"the Hub refused the request: {error}"
    httpx = sys.modules.get("httpx")
    if httpx is not None and isinstance(error, httpx.TransportError):
        return f"cannot reach the Hub ({type(error).__name__}: {error}); check the network or HF_ENDPOINT"
    return None
