"""Presets and hub download planning/verification, with a fake hub client (no network)."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from pathlib import Path

import pytest

from encore.errors import CheckpointError, InvalidRequest
from encore.pipeline import download as hub
from encore.pipeline import presets


def test_presets_cover_the_official_variants():
    assert set(presets.PRESETS) == {
        "turbo",
        "base",
        "sft",
        "turbo-shift1",
        "turbo-shift3",
        "xl-turbo",
        "xl-base",
        "xl-sft",
    }
    turbo = presets.get_preset("turbo")
    assert (turbo.defaults.num_steps, turbo.defaults.shift, turbo.defaults.guidance_scale) == (8, 3.0, 1.0)
    assert turbo.defaults.guidance is None and turbo.is_turbo
    base = presets.get_preset("acestep-v15-base")
    assert base.name == "base" and not base.is_turbo
    assert (base.defaults.num_steps, base.defaults.guidance_scale, base.defaults.guidance) == (50, 7.0, "apg")
    assert presets.get_preset("turbo-shift1").defaults.shift == 1.0
    assert presets.get_preset("xl-sft").is_xl and presets.get_preset("xl-sft").dit_dir == "acestep-v15-xl-sft"
    with pytest.raises(InvalidRequest, match="unknown preset"):
        presets.get_preset("turbo-9000")


def test_apply_defaults_fills_only_none_fields():
    @dataclasses.dataclass(frozen=True)
    class Options:
        num_steps: int | None = None
        shift: float | None = 2.0
        guidance_scale: float | None = None
        solver: str = "ode"

    out = presets.get_preset("base").apply_defaults(Options())
    assert out == Options(num_steps=50, shift=2.0, guidance_scale=7.0, solver="ode")


def test_plan_for_main_bundle_and_separate_repo():
    parts, load_dir = hub.plan_download("turbo")
    assert load_dir == "acestep-v15-turbo" and len(parts) == 1
    assert parts[0].repo == presets.MAIN_REPO
    assert set(parts[0].patterns or ()) == {"vae/*", "Qwen3-Embedding-0.6B/*", "acestep-v15-turbo/*"}
    parts, load_dir = hub.plan_download("xl-base", revision="abc", include_lm=True)
    assert [p.repo for p in parts] == [presets.MAIN_REPO, "ACE-Step/acestep-v15-xl-base"]
    assert (
        parts[1].subdir == "acestep-v15-xl-base" and parts[1].revision == "abc" and parts[0].revision is None
    )
    assert "acestep-5Hz-lm-1.7B/*" in (parts[0].patterns or ())
    parts, load_dir = hub.plan_download("someone/custom-acestep")
    assert load_dir == "" and parts[0].patterns is None
    with pytest.raises(InvalidRequest):
        hub.plan_download("nope")


class FakeHub:
    """Serves files from a dict; `corrupt_first` makes the first fetch of a file write wrong bytes."""

    def __init__(
        self,
        repos: dict[str, dict[str, bytes]],
        corrupt_first: Sequence[str] = (),
        always_corrupt: Sequence[str] = (),
    ) -> None:
        self.repos = repos
        self.pending_corruption = set(corrupt_first)
        self.always_corrupt = set(always_corrupt)
        self.fetches: list[tuple[str, tuple[str, ...] | None, bool]] = []

    def list_files(self, repo_id: str, revision: str | None) -> list[hub.RemoteFile]:
        return [
            hub.RemoteFile(
                path, len(data), hashlib.sha256(data).hexdigest() if path.endswith(".safetensors") else None
            )
            for path, data in self.repos[repo_id].items()
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
        self.fetches.append((repo_id, tuple(allow_patterns) if allow_patterns is not None else None, force))
        for path, data in self.repos[repo_id].items():
            if not hub._wanted(path, allow_patterns):
                continue
            out = dest / path
            if out.exists() and not force:
                continue  # huggingface_hub skips complete files
            out.parent.mkdir(parents=True, exist_ok=True)
            bad = path in self.always_corrupt or path in self.pending_corruption
            self.pending_corruption.discard(path)
            out.write_bytes(bytes(reversed(data)) if bad else data)


def _repos() -> dict[str, dict[str, bytes]]:
    return {
        presets.MAIN_REPO: {
            "vae/config.json": b"{}",
            "vae/diffusion_pytorch_model.safetensors": b"vae-weights",
            "Qwen3-Embedding-0.6B/model.safetensors": b"text-weights",
            "acestep-v15-turbo/model.safetensors": b"dit",
            "acestep-5Hz-lm-1.7B/model.safetensors": b"lm",
            "README.md": b"hello",
        },
        "ACE-Step/acestep-v15-base": {"config.json": b"{}", "model.safetensors": b"base-weights"},
    }


def test_download_preset_layout_and_manifest(tmp_path):
    fake = FakeHub(_repos())
    out = hub.download("base", tmp_path, client=fake)
    assert out == tmp_path / "acestep-v15-base"
    assert (out / "model.safetensors").read_bytes() == b"base-weights"
    assert (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() == b"vae-weights"
    assert not (tmp_path / "acestep-5Hz-lm-1.7B").exists() and not (tmp_path / "README.md").exists()
    assert (out / hub.manifest_name("ACE-Step/acestep-v15-base")).is_file()
    assert all(not force for _, _, force in fake.fetches)


def test_download_refetches_a_corrupt_file_once(tmp_path):
    fake = FakeHub(_repos(), corrupt_first=["vae/diffusion_pytorch_model.safetensors"])
    hub.download("turbo", tmp_path, client=fake)
    assert (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() == b"vae-weights"
    forced = [f for f in fake.fetches if f[2]]
    assert forced == [(presets.MAIN_REPO, ("vae/diffusion_pytorch_model.safetensors",), True)]


def test_download_gives_up_on_persistent_mismatch(tmp_path):
    fake = FakeHub(_repos(), always_corrupt=["model.safetensors"])
    with pytest.raises(CheckpointError) as info:
        hub.download("base", tmp_path, client=fake)
    assert info.value.path == str(tmp_path / "acestep-v15-base" / "model.safetensors")


def test_verify_detects_size_and_hash_mismatch(tmp_path):
    (tmp_path / "a.safetensors").write_bytes(b"abcd")
    (tmp_path / "b.json").write_bytes(b"{}")
    good = hashlib.sha256(b"abcd").hexdigest()
    remote = [hub.RemoteFile("a.safetensors", 4, good), hub.RemoteFile("b.json", 2, None)]
    assert hub.verify_files(tmp_path, remote) == []
    assert hub.verify_files(tmp_path, [hub.RemoteFile("a.safetensors", 4, "0" * 64)]) == ["a.safetensors"]
    assert hub.verify_files(tmp_path, [hub.RemoteFile("a.safetensors", 4, "0" * 64)], "size") == []
    assert hub.verify_files(tmp_path, [hub.RemoteFile("b.json", 3, None)]) == ["b.json"]
    assert hub.verify_files(tmp_path, [hub.RemoteFile("c.json", 3, None)]) == ["c.json"]


def test_default_root_honours_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ENCORE_CHECKPOINT_DIR", str(tmp_path))
    assert hub.default_checkpoint_root() == tmp_path


def test_huggingface_client_adapts_hub_objects(monkeypatch, tmp_path):
    import huggingface_hub
    from huggingface_hub.hf_api import BlobLfsInfo, RepoSibling

    calls: dict[str, object] = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def model_info(self, repo_id, *, revision=None, files_metadata=False):
            calls["info"] = (repo_id, revision, files_metadata)
            return type(
                "Info",
                (),
                {
                    "siblings": [
                        RepoSibling(
                            "model.safetensors",
                            size=10,
                            lfs=BlobLfsInfo(size=10, sha256="ab" * 32, pointer_size=1),
                        ),
                        RepoSibling("config.json", size=2),
                    ]
                },
            )()

    def fake_snapshot(repo_id, **kwargs):
        calls["snapshot"] = (repo_id, kwargs)
        return str(kwargs["local_dir"])

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    client = hub.HuggingFaceClient(token="t")
    files = client.list_files("o/r", "rev")
    assert files == [
        hub.RemoteFile("model.safetensors", 10, "ab" * 32),
        hub.RemoteFile("config.json", 2, None),
    ]
    assert calls["info"] == ("o/r", "rev", True) and calls["token"] == "t"
    client.fetch("o/r", tmp_path, revision="rev", allow_patterns=["vae/*"], force=False)
    repo, kwargs = calls["snapshot"]
    assert repo == "o/r" and kwargs["local_dir"] == tmp_path and kwargs["allow_patterns"] == ["vae/*"]
    assert kwargs["revision"] == "rev" and kwargs["force_download"] is False
