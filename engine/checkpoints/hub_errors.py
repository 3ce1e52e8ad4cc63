"""The ways a checkpoint can be unavailable, and how huggingface_hub's failures map onto them.

Every message is one line a user can act on (log in, accept the license, go online, retry), and
none ever contains the token.
"""

from __future__ import annotations

import os

# How the CLI downloads a model; used in error messages.
DOWNLOAD_COMMAND = "pali presets download {label}"
_LICENSE_PAGE = "https://huggingface.co/{repo}"


class ModelUnavailableError(RuntimeError):
    """A checkpoint cannot be made available locally. Subclasses say why."""


class AuthenticationRequiredError(ModelUnavailableError):
    """HTTP 401: no token, or the token was rejected."""


class AccessDeniedError(ModelUnavailableError):
    """HTTP 403: the token's account has not accepted the model's license (gated repository)."""


class ModelNotFoundError(ModelUnavailableError):
    """HTTP 404: no such repository, revision or file."""


class OfflineError(ModelUnavailableError):
    """Not downloaded, and the Hub may not or cannot be reached."""


class DownloadInterruptedError(ModelUnavailableError):
    """The connection broke during a download; running again continues it."""


class UnsupportedCheckpointError(ModelUnavailableError):
    """The repository has no safetensors weights, config.json or tokenizer.model."""


class LocalModelError(ModelUnavailableError):
    """A local directory (or the bundled demo model) is missing or is not a checkpoint."""


def translate(
    error: BaseException, source, token: str | None, endpoint: str | None, how: str | None = None
) -> ModelUnavailableError | None:
    """Turn huggingface_hub / httpx2 failures into one of our errors (None: not a hub failure).
    ``how`` is the command that downloads it (default: ``pali presets download LABEL``)."""
    import httpx2
    from huggingface_hub.errors import (
        FileMetadataError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RevisionNotFoundError,
    )

    chain = _exception_chain(error)
    repo, label = source.repo_id, source.label
    page = _LICENSE_PAGE.format(repo=repo)
    how = how or DOWNLOAD_COMMAND.format(label=label)
    http = next((e for e in chain if isinstance(e, HfHubHTTPError)), None)
    if http is not None:
        status = http.response.status_code if http.response is not None else None
        if status == 401:
            message = (
                f"downloading {label} needs a Hugging Face login (HTTP 401; a misspelt repo name "
                f"gets the same answer): {_token_state(token)} run `hf auth login` or set HF_TOKEN "
                f"to a read token, and accept the license at {page} with that account."
            )
            return AuthenticationRequiredError(_scrub(message, token))
        if status == 403 or isinstance(http, GatedRepoError):
            message = (
                f"access to {repo} is restricted (gated model, HTTP {status}): accept the license "
                f"at {page} while logged in with the account of your token, then try again."
            )
            return AccessDeniedError(_scrub(message, token))
        if isinstance(http, RevisionNotFoundError):
            return ModelNotFoundError(
                f"{label}: revision {source.revision or 'main'!r} not found in {repo} on the Hub (HTTP 404)."
            )
        if status == 404:
            return ModelNotFoundError(f"{label}: {repo} not found on the Hugging Face Hub (HTTP 404); check the name.")
        return ModelUnavailableError(
            f"the Hugging Face Hub answered HTTP {status} while fetching {label}; try again later."
        )
    endpoint = endpoint or "https://huggingface.co"
    if any(isinstance(e, FileMetadataError) for e in chain):
        return ModelUnavailableError(
            f"{endpoint} does not answer like a Hugging Face Hub while fetching "
            f"{label}; check HF_ENDPOINT and any proxy settings."
        )
    if any(isinstance(e, OfflineModeIsEnabled) for e in chain):
        return OfflineError(
            f"{label} is not downloaded and huggingface_hub is in offline mode "
            f"(HF_HUB_OFFLINE): run `{how}` while online."
        )
    if any(isinstance(e, (httpx2.ConnectError, httpx2.ConnectTimeout)) for e in chain) or (
        isinstance(error, LocalEntryNotFoundError)
    ):
        return OfflineError(
            f"cannot reach the Hugging Face Hub at {endpoint} and {label} is not "
            f"(fully) downloaded: check the connection, then run `{how}`."
        )
    broken = next((e for e in chain if isinstance(e, httpx2.TransportError)), None)
    if broken is not None or "Consistency check failed" in str(error):
        return DownloadInterruptedError(
            f"the download of {label} was interrupted ({type(broken or error).__name__}); run "
            f"`{how}` again to continue: files already finished are kept."
        )
    return None


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
