"""Sharing learned-solver files through the Hugging Face Hub (``huggingface_hub``).

``pull_learned_solver`` downloads a file (through the Hub's own cache, so a file pulled once is
there offline), validates it, and only then copies it into the destination folder.
``push_learned_solver`` validates a file and uploads it with a model card whose front matter is
the file's metadata. Every failure (offline, not found, not authorised, invalid file) raises
``SharingError`` or ``LearnedSolverFileError`` with what to do about it.
"""

from __future__ import annotations

import json
import os

from .files import (
    DESCRIPTION_KEYS,
    EXTENSION,
    _read_bytes,
    load_learned_solver,
    read_metadata,
    solver_from_bytes,
    write_atomically,
)

CARD_TAGS = ["learned-solver", "diffusion-sampler", "comfyui"]
LIBRARY_NAME = "learned-solvers"


class SharingError(RuntimeError):
    """The Hub could not be reached, or refused the request; the message says what to do."""


def _hub_errors():
    from huggingface_hub import errors

    return errors


def _explain(err, repo_id: str, action: str) -> str:
    """A message a user can act on for a huggingface_hub (or network) exception."""
    errors = _hub_errors()
    if isinstance(err, errors.LocalEntryNotFoundError):
        return (f"cannot {action} {repo_id}: the file is not in the local Hugging Face cache and the Hub "
                f"cannot be reached (offline, or HF_HUB_OFFLINE is set); connect and try again, or put "
                f"the .safetensors file into models/learned_solvers yourself")
    if isinstance(err, errors.OfflineModeIsEnabled):
        return f"cannot {action} {repo_id}: HF_HUB_OFFLINE is set; unset it to reach the Hub"
    if isinstance(err, errors.GatedRepoError):
        return (f"cannot {action} {repo_id}: the repository is gated; accept its terms on the Hub and log "
                f"in (`hf auth login`, or set HF_TOKEN)")
    if isinstance(err, errors.RepositoryNotFoundError):
        return (f"cannot {action} {repo_id}: no such repository, or it is private and no token with "
                f"access was given (`hf auth login`, or set HF_TOKEN)")
    if isinstance(err, errors.RevisionNotFoundError):
        return f"cannot {action} {repo_id}: no such revision (branch, tag or commit)"
    if isinstance(err, getattr(errors, "RemoteEntryNotFoundError", errors.EntryNotFoundError)):
        return f"cannot {action} {repo_id}: the repository has no such file"
    if isinstance(err, errors.HFValidationError):
        return f"cannot {action} {repo_id!r}: not a valid repository id (it looks like 'user/name')"
    status = getattr(getattr(err, "response", None), "status_code", None)
    if status in (401, 403):
        return (f"cannot {action} {repo_id}: not authorised (HTTP {status}); log in with a token that can "
                f"write to it (`hf auth login`, or set HF_TOKEN)")
    return f"cannot {action} {repo_id}: {type(err).__name__}: {err}"


def pull_learned_solver(repo_id: str, filename: str, folder: str, *, revision: str | None = None,
                        cache_dir: str | None = None, local_files_only: bool = False,
                        token: str | None = None) -> str:
    """Download ``filename`` from the Hub model repository ``repo_id`` (at ``revision``), validate
    it, and copy it into ``folder``; returns the path there. A file of the same name with other
    contents is kept: the new one gets a numbered name. Nothing lands in ``folder`` unless the
    file validates (``LearnedSolverFileError`` otherwise)."""
    from huggingface_hub import hf_hub_download

    from .files import new_file_path

    if not filename.endswith(EXTENSION):
        raise SharingError(f"{filename!r} is not a learned-solver file; they end in {EXTENSION}")
    try:
        cached = hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir,
                                 local_files_only=local_files_only, token=token)
    except Exception as err:  # network and Hub failures of every kind become one clear message
        raise SharingError(_explain(err, repo_id, "pull from")) from err
    blob = _read_bytes(cached)
    solver_from_bytes(blob, cached)
    name = os.path.basename(filename)
    target = os.path.join(folder, name)
    if os.path.exists(target):
        if _read_bytes(target) == blob:
            return target
        target = new_file_path(folder, name)
    return write_atomically(target, blob)


def model_card(metadata: dict, filename: str) -> str:
    """A Hub model card (README.md) for a learned-solver file: its metadata as front matter."""
    import yaml

    fits = json.loads(metadata.get("fits", "{}"))
    front = {"library_name": LIBRARY_NAME, "tags": CARD_TAGS, "learned_solver": {"file": filename}}
    for key in DESCRIPTION_KEYS + ("format_version",):
        if key in metadata and key not in ("author", "description", "license"):  # those have their own places
            front["learned_solver"][key] = metadata[key]
    if "license" in metadata:
        front["license"] = metadata["license"].lower()
    rows = ["| NFE | method | held-out RMSE | base solver's | fit s |", "|---|---|---|---|---|"]
    for nfe, fit in sorted(fits.items(), key=lambda item: int(item[0])):
        rows.append(f"| {nfe} | {fit.get('method')} | {fit.get('held_out_rmse')} | {fit.get('base_held_out_rmse')} "
                    f"| {fit.get('fit_seconds')} |")
    body = [
        f"# {filename}",
        "",
        metadata.get("description", "A few-step diffusion sampler fitted to one model."),
        "",
        f"A learned solver (method `{metadata.get('method')}`, base `{metadata.get('base')}`) for "
        f"{metadata.get('model_family', 'an unnamed model')}. Put the file into `ComfyUI/models/learned_solvers` "
        f"and use the Load Learned Solver node, or the KSampler scheduler `learned: {filename[:-len(EXTENSION)]}`.",
        "",
        "RMSE to the many-step teacher on held-out seeds:",
        "",
        *rows,
        "",
    ]
    if "author" in metadata:
        body += [f"Author: {metadata['author']}", ""]
    return "---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n\n" + "\n".join(body)


def push_learned_solver(path: str, repo_id: str, *, path_in_repo: str | None = None, token: str | None = None,
                        private: bool = False, card: bool = True, api=None,
                        commit_message: str | None = None) -> str:
    """Validate ``path`` and upload it to the Hub model repository ``repo_id`` (created if
    missing), with a model card (README.md) made from its metadata unless ``card`` is False.
    Returns the commit's URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    path = os.fspath(path)
    load_learned_solver(path)
    metadata = read_metadata(path)
    name = path_in_repo or os.path.basename(path)
    if not name.endswith(EXTENSION):
        raise SharingError(f"path_in_repo {name!r} must end in {EXTENSION}")
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=path)]
    if card:
        operations.append(CommitOperationAdd(path_in_repo="README.md",
                                             path_or_fileobj=model_card(metadata, name).encode()))
    api = api or HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.create_commit(repo_id, operations=operations, repo_type="model",
                                   commit_message=commit_message or f"Add learned solver {name}")
    except Exception as err:
        raise SharingError(_explain(err, repo_id, "push to")) from err
    return str(getattr(commit, "commit_url", commit))


__all__ = ["SharingError", "model_card", "pull_learned_solver", "push_learned_solver"]
