"""SAEs published on the Hugging Face hub: one SAE folder of a repo, fetched into the standard
Hugging Face cache (HF_HUB_CACHE, default ~/.cache/huggingface/hub) and then loaded like any
folder."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from faithcase.run.errors import FaithcaseError
from faithcase.saes.helpers import one_line

CONFIG_NAMES = ("cfg.json", "config.json")  # a folder holding one of these is an SAE folder
MAX_LISTED = 10
TRUE_VALUES = {"1", "ON", "YES", "TRUE"}


def hub_sae_folder(repo: str, sae_id: str | None = None, revision: str | None = None) -> Path:
    """The local folder of SAE `sae_id` of hub repo `repo` ("OWNER/NAME") at `revision`
    (branch, tag or commit; None = the default branch).

    Downloads only the files under `<sae_id>/` (the whole repo when `sae_id` is None) into the
    standard Hugging Face cache, and returns `<snapshot>/<sae_id>`, or the snapshot root when
    `sae_id` is None. `sae_id` is a folder path inside the repo, e.g. a SAELens SAE id
    (`<id>/cfg.json` + `<id>/sae_weights.safetensors`), a sparsify hook point (`layers.6`) or a
    BatchTopK folder; the format is not checked here: pass the folder to `load_sae`, which detects
    it (a sparsify folder holding one subfolder per hook works too, chosen by `hook`).

    With HF_HUB_OFFLINE=1 (in the environment now, or when huggingface_hub was imported) only
    the cache is read. Every failure raises one FaithcaseError with a one-line message saying
    what to do: not in the cache while offline, unknown (or private/gated) repo, unknown
    revision, no folder `sae_id` in the repo (listing up to 10 SAE folders that exist),
    a network or hub error.
    """
    import huggingface_hub

    sae_id = _clean_sae_id(sae_id, repo)
    offline = _offline()
    try:
        snapshot = Path(
            huggingface_hub.snapshot_download(
                repo_id=repo,
                revision=revision,
                allow_patterns=[f"{sae_id}/*"] if sae_id else None,
                local_files_only=offline,
            )
        )
    except Exception as exc:
        raise _download_error(exc, repo, sae_id, revision, offline) from exc
    if sae_id is None:
        return snapshot
    folder = snapshot / sae_id
    if not folder.is_dir():
        raise _missing_id_error(repo, sae_id, revision, snapshot, offline)
    return folder


def _offline() -> bool:
    from huggingface_hub import constants

    from_env = os.environ.get("HF_HUB_OFFLINE", "").upper() in TRUE_VALUES
    return bool(constants.HF_HUB_OFFLINE) or from_env


def _clean_sae_id(sae_id: str | None, repo: str) -> str | None:
    if sae_id is None or not sae_id.strip("/"):
        return None
    cleaned = sae_id.strip("/")
    dotted = any(part in (".", "..") for part in PurePosixPath(cleaned).parts)
    if dotted or any(c in cleaned for c in "*?[]\\"):
        raise FaithcaseError(
            f"SAE id {sae_id!r} of hub repo {repo!r} must be a plain folder path inside the repo"
        )
    return cleaned


def _repo_label(repo: str, revision: str | None) -> str:
    return f"hub repo {repo!r}" + (f" at revision {revision!r}" if revision else "")


def _download_command(repo: str, sae_id: str | None, revision: str | None) -> str:
    return (
        f"hf download {repo}"
        + (f" --revision {revision}" if revision else "")
        + (f" --include '{sae_id}/*'" if sae_id else "")
    )


def _download_error(
    exc: Exception, repo: str, sae_id: str | None, revision: str | None, offline: bool
) -> FaithcaseError:
    from huggingface_hub import constants, errors

    label = _repo_label(repo, revision)
    command = _download_command(repo, sae_id, revision)
    what = f"SAE {sae_id!r} of {label}" if sae_id else label
    if isinstance(exc, getattr(errors, "IncompleteSnapshotError", ())):
        how = (
            "HF_HUB_OFFLINE=1 is set" if offline else f"the hub cannot be reached ({_cause(exc)})"
        )
        return FaithcaseError(
            f"the cached copy of {what} is incomplete and {how}:"
            f" download it once online ({command})"
            + (" or unset HF_HUB_OFFLINE" if offline else "")
        )
    if isinstance(exc, errors.LocalEntryNotFoundError):
        if offline:
            return FaithcaseError(
                f"{label} is not in the Hugging Face cache ({constants.HF_HUB_CACHE})"
                f" and HF_HUB_OFFLINE=1 is set:"
                f" download it once online ({command}) or unset HF_HUB_OFFLINE"
            )
        return FaithcaseError(
            f"cannot reach the Hugging Face hub for {what} ({_cause(exc)})"
            f" and it is not in the cache ({constants.HF_HUB_CACHE}):"
            f" check the network connection (and HF_ENDPOINT) and try again"
        )
    if isinstance(exc, errors.GatedRepoError):
        return FaithcaseError(
            f"{label} is gated: accept its conditions on https://huggingface.co/{repo}"
            f" and log in (hf auth login, or set HF_TOKEN)"
        )
    if isinstance(exc, errors.RepositoryNotFoundError):
        return FaithcaseError(
            f"{label} not found on the Hugging Face hub: check the repo id (OWNER/NAME);"
            f" for a private repo, log in (hf auth login, or set HF_TOKEN)"
        )
    if isinstance(exc, errors.RevisionNotFoundError):
        return FaithcaseError(
            f"revision {revision!r} not found in hub repo {repo!r}:"
            f" give an existing branch, tag or commit hash"
        )
    if isinstance(exc, errors.HFValidationError):
        return FaithcaseError(f"invalid hub repo id {repo!r}: {one_line(exc)}")
    if isinstance(exc, errors.HfHubHTTPError):
        return FaithcaseError(
            f"the Hugging Face hub failed for {what}: {one_line(exc)}; try again later"
        )
    return FaithcaseError(
        f"cannot download {what} from the Hugging Face hub: {type(exc).__name__}: {one_line(exc)};"
        f" check the network connection, or set HF_HUB_OFFLINE=1 to use the cache"
    )


def _cause(exc: BaseException) -> str:
    cause = exc.__cause__ or exc
    return f"{type(cause).__name__}: {one_line(cause)}"


def _missing_id_error(
    repo: str, sae_id: str, revision: str | None, snapshot: Path, offline: bool
) -> FaithcaseError:
    folders = _sae_folders(repo, snapshot)
    listed = ", ".join(folders[:MAX_LISTED]) or "none"
    if len(folders) > MAX_LISTED:
        listed += f" (and {len(folders) - MAX_LISTED} more)"
    where = "in the cached copy of" if offline else "in"
    hint = (
        f"; if it exists on the hub, download it once online"
        f" ({_download_command(repo, sae_id, revision)}) or unset HF_HUB_OFFLINE"
        if offline
        else ""
    )
    return FaithcaseError(
        f"no SAE folder {sae_id!r} {where} {_repo_label(repo, revision)};"
        f" folders present: {listed}{hint}"
    )


def _sae_folders(repo: str, snapshot: Path) -> list[str]:
    """Folders of the repo holding an SAE config (else its top-level folders): from the repo's
    file list that huggingface_hub caches when online, else from the files on disk."""
    files = _cached_repo_files(repo, snapshot.name)
    if files is None:
        on_disk = snapshot.rglob("*") if snapshot.is_dir() else []
        files = [p.relative_to(snapshot).as_posix() for p in on_disk if p.is_file()]
    paths = [PurePosixPath(f) for f in files]
    folders = sorted({str(p.parent) for p in paths if p.name in CONFIG_NAMES})
    if folders:
        return ["(top level)" if f == "." else f for f in folders]
    return sorted({p.parts[0] for p in paths if len(p.parts) > 1})


def _cached_repo_files(repo: str, commit: str) -> list[str] | None:
    import huggingface_hub

    get_cached_repo_tree = getattr(huggingface_hub, "get_cached_repo_tree", None)
    if get_cached_repo_tree is None:
        return None
    try:
        return [entry.path for entry in get_cached_repo_tree(repo, revision=commit)]
    except Exception:  # no listing cached (offline downloads, older caches): use the disk
        return None
