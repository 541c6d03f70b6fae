"""Checkpoint download from the Hugging Face hub into the official folder layout, with file verification.

`download("turbo", dest)` fetches the DiT folder plus the shared `vae/` and `Qwen3-Embedding-0.6B/`
(SPEC §1); `download("owner/repo", dest)` fetches one repo. Downloads resume (huggingface_hub keeps
partial files) and every file is checked against the hub's sizes and LFS SHA-256 sums. No torch import.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from encore.errors import CheckpointError, InvalidRequest
from encore.pipeline.presets import DEFAULT_LM_DIR, MAIN_REPO, PRESETS, TEXT_ENCODER_DIR, VAE_DIR

log = logging.getLogger(__name__)

Verify = Literal["sha256", "size", "none"]


def default_checkpoint_root() -> Path:
    """`$ENCORE_CHECKPOINT_DIR`, else `~/.cache/encore/checkpoints`."""
    env = os.environ.get("ENCORE_CHECKPOINT_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "encore" / "checkpoints"


@dataclass(frozen=True)
class RemoteFile:
    """One file of a hub repo as the hub describes it."""

    path: str
    size: int | None
    sha256: str | None
    """LFS files only; small git files have no SHA-256 in the hub metadata."""


class HubClient(Protocol):
    """What `download` needs from a hub; tests pass a fake."""

    def list_files(self, repo_id: str, revision: str | None) -> list[RemoteFile]: ...

    def fetch(
        self,
        repo_id: str,
        dest: Path,
        *,
        revision: str | None,
        allow_patterns: Sequence[str] | None,
        force: bool,
    ) -> None: ...


class HuggingFaceClient:
    """`HubClient` backed by `huggingface_hub` (imported lazily)."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token

    def list_files(self, repo_id: str, revision: str | None) -> list[RemoteFile]:
        from huggingface_hub import HfApi

        info = HfApi(token=self.token).model_info(repo_id, revision=revision, files_metadata=True)
        return [
            RemoteFile(s.rfilename, s.size, s.lfs.sha256 if s.lfs is not None else None)
            for s in info.siblings or []
        ]

    def fetch(
        self,
        repo_id: str,
        dest: Path,
        *,
        revision: str | None,
        allow_patterns: Sequence[str] | None,
        force: bool,
    ) -> None:
        from huggingface_hub import snapshot_download

        # local_dir downloads resume from the partial files huggingface_hub keeps under dest/.cache.
        snapshot_download(
            repo_id,
            revision=revision,
            local_dir=dest,
            token=self.token,
            force_download=force,
            allow_patterns=list(allow_patterns) if allow_patterns is not None else None,
        )


@dataclass(frozen=True)
class DownloadPart:
    """One repo (or a subset of it) placed under `dest / subdir`."""

    repo: str
    subdir: str
    """Relative to the download root; `""` for the root itself."""
    patterns: tuple[str, ...] | None
    revision: str | None


def plan_download(
    preset_or_repo: str,
    *,
    revision: str | None = None,
    main_revision: str | None = None,
    include_lm: bool = False,
) -> tuple[list[DownloadPart], str]:
    """The repos to fetch and the folder (relative to the destination) to load afterwards.

    Args:
        preset_or_repo: Preset name (`turbo`, `xl-base`, ...) or a hub repo id `owner/name`.
        revision: Pins the repo holding the DiT (or the given repo).
        main_revision: Pins `ACE-Step/Ace-Step1.5`, which holds the shared VAE and text encoder.
        include_lm: Also fetch the default 5 Hz LM (`acestep-5Hz-lm-1.7B`).
    """
    if "/" in preset_or_repo:
        return [DownloadPart(preset_or_repo, "", None, revision)], ""
    preset = PRESETS.get(preset_or_repo)
    if preset is None:
        raise InvalidRequest(
            "model",
            f"unknown preset {preset_or_repo!r}; choose one of {sorted(PRESETS)} "
            "or give a hub repo id owner/name",
        )
    shared = [f"{VAE_DIR}/*", f"{TEXT_ENCODER_DIR}/*"] + ([f"{DEFAULT_LM_DIR}/*"] if include_lm else [])
    if preset.repo == MAIN_REPO:
        patterns = (*shared, f"{preset.repo_subfolder}/*")
        return [DownloadPart(MAIN_REPO, "", patterns, revision or main_revision)], preset.dit_dir
    return [
        DownloadPart(MAIN_REPO, "", tuple(shared), main_revision),
        DownloadPart(preset.repo, preset.dit_dir, None, revision),
    ], preset.dit_dir


def download(
    preset_or_repo: str,
    dest: str | Path | None = None,
    *,
    revision: str | None = None,
    main_revision: str | None = None,
    include_lm: bool = False,
    verify: Verify = "sha256",
    client: HubClient | None = None,
) -> Path:
    """Downloads a checkpoint into the official layout and verifies it.

    Args:
        preset_or_repo: Preset name or hub repo id.
        dest: Download root (default `default_checkpoint_root()`).
        revision: Branch, tag or commit of the repo holding the DiT.
        main_revision: Revision of the shared main bundle.
        include_lm: Also fetch the default planner LM.
        verify: `"sha256"` (sizes + LFS hashes), `"size"` or `"none"`.
        client: Hub access (default `HuggingFaceClient()`).

    Returns:
        The folder to pass to `load_components` (the DiT folder for presets).

    Raises:
        CheckpointError: a file is missing or still fails verification after one forced re-download.
        InvalidRequest: unknown preset name.
    """
    root = Path(dest) if dest is not None else default_checkpoint_root()
    hub = client if client is not None else HuggingFaceClient()
    parts, load_dir = plan_download(
        preset_or_repo, revision=revision, main_revision=main_revision, include_lm=include_lm
    )
    for part in parts:
        target = root / part.subdir if part.subdir else root
        target.mkdir(parents=True, exist_ok=True)
        log.info("fetching %s%s into %s", part.repo, f"@{part.revision}" if part.revision else "", target)
        hub.fetch(part.repo, target, revision=part.revision, allow_patterns=part.patterns, force=False)
        if verify == "none":
            continue
        remote = [f for f in hub.list_files(part.repo, part.revision) if _wanted(f.path, part.patterns)]
        bad = verify_files(target, remote, verify)
        if bad:
            log.warning("re-downloading %d file(s) that failed verification: %s", len(bad), bad)
            hub.fetch(part.repo, target, revision=part.revision, allow_patterns=bad, force=True)
            still = verify_files(target, [f for f in remote if f.path in bad], verify)
            if still:
                raise CheckpointError(
                    str(target / still[0]),
                    "failed verification against the hub metadata after a forced re-download",
                )
        _write_manifest(target, part, remote)
    return root / load_dir if load_dir else root


def _wanted(path: str, patterns: Sequence[str] | None) -> bool:
    return patterns is None or any(fnmatch.fnmatch(path, p) for p in patterns)


def verify_files(folder: Path, remote: Sequence[RemoteFile], verify: Verify = "sha256") -> list[str]:
    """Relative paths of files that are missing, of the wrong size, or (for `"sha256"`) of the wrong hash."""
    bad: list[str] = []
    for f in remote:
        if not _file_ok(folder / f.path, f, verify):
            bad.append(f.path)
    return bad


def _file_ok(local: Path, remote: RemoteFile, verify: Verify) -> bool:
    if not local.is_file():
        return False
    if remote.size is not None and local.stat().st_size != remote.size:
        return False
    return verify != "sha256" or remote.sha256 is None or sha256_file(local) == remote.sha256


def sha256_file(path: Path, chunk_bytes: int = 1 << 24) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_name(repo: str) -> str:
    """File name of the download manifest for `repo` (one per repo, in the folder it was fetched into)."""
    return f"encore-manifest-{repo.replace('/', '--')}.json"


def _write_manifest(target: Path, part: DownloadPart, remote: Sequence[RemoteFile]) -> None:
    # Recorded so later start-ups can check the files offline against what the hub promised.
    manifest = {
        "repo": part.repo,
        "revision": part.revision,
        "patterns": list(part.patterns or []),
        "files": {f.path: {"size": f.size, "sha256": f.sha256} for f in remote},
    }
    path = target / manifest_name(part.repo)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
