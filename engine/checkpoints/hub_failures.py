"""How huggingface_hub's (and httpx2's) failures map onto engine.errors' ModelUnavailableError kinds.

Every message is one line a user can act on (log in, accept the licence, go online, retry), and
none ever contains the token. Messages speak of the checkpoint and the Hub, never of a front end's
commands: each error carries the checkpoint's ``label`` so that the CLI can add its own hint.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from engine.errors import (
    AccessDeniedError,
    AuthenticationRequiredError,
    DownloadInterruptedError,
    ModelNotFoundError,
    ModelUnavailableError,
    OfflineError,
)

if TYPE_CHECKING:
    from engine.checkpoints.specs import HubSource

_LICENSE_PAGE = "https://huggingface.co/{repo}"


def translate(
    error: BaseException, source: HubSource, token: str | None, endpoint: str | None
) -> ModelUnavailableError | None:
    """Turn a huggingface_hub / httpx2 failure into one of our errors (None: not a Hub failure)."""
    from huggingface_hub.errors import HfHubHTTPError

    chain = _exception_chain(error)
    http = next((e for e in chain if isinstance(e, HfHubHTTPError)), None)
    if http is not None:
        return _http_failure(http, source, token)
    return _transport_failure(error, chain, source, endpoint or "https://huggingface.co")


def _http_failure(http: Exception, source: HubSource, token: str | None) -> ModelUnavailableError:
    """The Hub answered, with an error status."""
    from huggingface_hub.errors import GatedRepoError, RevisionNotFoundError

    repo, label = source.repo_id, source.label
    page = _LICENSE_PAGE.format(repo=repo)
    response = getattr(http, "response", None)
    status = response.status_code if response is not None else None
    if status == 401:
        message = (
            f"downloading {label} needs a Hugging Face login (HTTP 401; a misspelt repo name "
            f"gets the same answer): {_token_state(token)} run `hf auth login` or set HF_TOKEN "
            f"to a read token, and accept the license at {page} with that account."
        )
        return AuthenticationRequiredError(_scrub(message, token), label=label)
    if status == 403 or isinstance(http, GatedRepoError):
        message = (
            f"access to {repo} is restricted (gated model, HTTP {status}): accept the license "
            f"at {page} while logged in with the account of your token, then try again."
        )
        return AccessDeniedError(_scrub(message, token), label=label)
    if isinstance(http, RevisionNotFoundError):
        revision = source.revision or "main"
        return ModelNotFoundError(
            f"{label}: revision {revision!r} not found in {repo} on the Hub (HTTP 404).", label=label
        )
    if status == 404:
        return ModelNotFoundError(
            f"{label}: {repo} not found on the Hugging Face Hub (HTTP 404); check the name.", label=label
        )
    return ModelUnavailableError(
        f"the Hugging Face Hub answered HTTP {status} while fetching {label}; try again later.", label=label
    )


def _transport_failure(
    error: BaseException, chain: list[BaseException], source: HubSource, endpoint: str
) -> ModelUnavailableError | None:
    """No usable answer: offline, unreachable, not a Hub, or a connection that broke mid-file."""
    import httpx2
    from huggingface_hub.errors import (
        FileMetadataError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
    )

    label = source.label
    # FileMetadataError: files without the Hub's headers. ValueError (JSONDecodeError), TypeError,
    # KeyError: huggingface_hub could not read the answer at all (a web page, a proxy's login form).
    unreadable = isinstance(error, _UNREADABLE) and not isinstance(error, HFValidationError)
    if unreadable or any(isinstance(e, FileMetadataError) for e in chain):
        return ModelUnavailableError(
            f"{endpoint} does not answer like a Hugging Face Hub while fetching "
            f"{label}; check HF_ENDPOINT and any proxy settings.",
            label=label,
        )
    if any(isinstance(e, OfflineModeIsEnabled) for e in chain):
        return OfflineError(
            f"{label} is not downloaded and huggingface_hub is in offline mode (HF_HUB_OFFLINE): "
            "download it while online.",
            label=label,
        )
    if any(isinstance(e, (httpx2.ConnectError, httpx2.ConnectTimeout)) for e in chain) or (
        isinstance(error, LocalEntryNotFoundError)
    ):
        return OfflineError(
            f"cannot reach the Hugging Face Hub at {endpoint} and {label} is not "
            "(fully) downloaded: check the connection, then try again.",
            label=label,
        )
    broken = next((e for e in chain if isinstance(e, httpx2.TransportError)), None)
    if broken is not None or "Consistency check failed" in str(error):
        return DownloadInterruptedError(
            f"the download of {label} was interrupted ({type(broken or error).__name__}); try again "
            "to continue it: files already finished are kept.",
            label=label,
        )
    return None


_UNREADABLE = (ValueError, TypeError, KeyError)


def _exception_chain(error: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _token_state(token: str | None) -> str:
    from huggingface_hub import get_token

    if token or get_token():
        return "the Hub rejected the token in use (wrong, expired or without read access);"
    return "no token was found;"


def _scrub(message: str, token: str | None) -> str:
    # Our messages never embed a token, but make sure no future edit can leak one.
    from huggingface_hub import get_token

    for secret in {token, get_token(), os.environ.get("HF_TOKEN")}:
        if secret and len(secret) >= 8:  # real tokens are long; never mangle words with a stub
            message = message.replace(secret, "***")
    return message
