"""Named model variants: which checkpoint folder and hub repo hold each DiT, and its sampling defaults.

Per-variant diffusion defaults are defined here once (STYLE §6.2); request fields left `None` take these
values. The built-in name `embedded` is the small model shipped inside the package (`encore/assets/embedded`),
found through `importlib.resources`. Pure data, no torch, so front-ends and `pipeline.download` may import it.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from encore.errors import InvalidRequest

_T = TypeVar("_T")

MAIN_REPO = "ACE-Step/Ace-Step1.5"
"""Hub bundle: `acestep-v15-turbo/`, `vae/`, `Qwen3-Embedding-0.6B/`, `acestep-5Hz-lm-1.7B/` (SPEC §1)."""
VAE_DIR = "vae"
TEXT_ENCODER_DIR = "Qwen3-Embedding-0.6B"
DEFAULT_LM_DIR = "acestep-5Hz-lm-1.7B"
LM_REPOS = {
    "acestep-5Hz-lm-0.6B": "ACE-Step/acestep-5Hz-lm-0.6B",
    "acestep-5Hz-lm-1.7B": MAIN_REPO,
    "acestep-5Hz-lm-4B": "ACE-Step/acestep-5Hz-lm-4B",
}
EMBEDDED_NAME = "embedded"
"""Built-in checkpoint name: the embedded model bundled in the package (not a downloadable preset)."""
EMBEDDED_MARKER = "embedded.json"
"""Written last by the embedded export; marks a complete embedded checkpoint root."""
EMBEDDED_TEXT_ENCODER_DIR = "all-MiniLM-L6-v2"
"""Caption encoder folder of an embedded checkpoint root (sentence-transformers MiniLM, 384-d)."""
EMBEDDED_MISSING_HINT = (
    "the built-in embedded model is not bundled with this installation of Encore; pass --checkpoint FOLDER "
    "(or set $ENCORE_CHECKPOINT), or get the official weights with `encore download turbo` and use "
    "`--checkpoint turbo`"
)


SOLVERS: tuple[str, ...] = ("ode", "sde")
"""The samplers a request (`DiffusionOptions.solver`) or a checkpoint's defaults may name."""


@dataclass(frozen=True, kw_only=True)
class DiffusionDefaults:
    """Sampling defaults of one variant (SPEC §9.3, §9.4, §11)."""

    num_steps: int
    shift: float
    guidance_scale: float
    """1.0 disables guidance (turbo models are guidance-distilled)."""
    guidance: Literal["apg", "cfg", "adg"] | None
    """Guidance rule for `guidance_scale > 1`; `None` for turbo."""
    solver: Literal["ode", "sde"] = "ode"
    """Euler ODE (the official default for every variant) or SDE; the embedded turbo names SDE."""


_TURBO = DiffusionDefaults(num_steps=8, shift=3.0, guidance_scale=1.0, guidance=None)
# Official UI/CLI/API default shift 3.0 and guidance 7.0 with APG; README/ports use 50 steps (SPEC §9.4).
_GUIDED = DiffusionDefaults(num_steps=50, shift=3.0, guidance_scale=7.0, guidance="apg")


@dataclass(frozen=True, kw_only=True)
class Preset:
    """One named DiT variant."""

    name: str
    dit_dir: str
    """Checkpoint subfolder name, e.g. `acestep-v15-turbo`."""
    repo: str
    """Hub repo holding the DiT files."""
    repo_subfolder: str | None
    """Folder of the DiT inside `repo`; `None` when the repo root is the DiT folder."""
    is_turbo: bool
    is_xl: bool
    defaults: DiffusionDefaults
    description: str

    def apply_defaults(self, options: _T) -> _T:
        """Returns `options` (a dataclass like `DiffusionOptions`) with `None` fields filled from the preset.

        Only fields named like `DiffusionDefaults` fields are touched; unknown fields are left alone.
        """
        names = {f.name for f in dataclasses.fields(options)}  # type: ignore[arg-type]
        updates = {
            f.name: getattr(self.defaults, f.name)
            for f in dataclasses.fields(DiffusionDefaults)
            if f.name in names and getattr(options, f.name) is None
        }
        return dataclasses.replace(options, **updates)  # type: ignore[type-var]


def _separate(
    name: str, *, is_turbo: bool, is_xl: bool, defaults: DiffusionDefaults, description: str
) -> Preset:
    dit_dir = f"acestep-v15-{name}"
    return Preset(
        name=name,
        dit_dir=dit_dir,
        repo=f"ACE-Step/{dit_dir}",
        repo_subfolder=None,
        is_turbo=is_turbo,
        is_xl=is_xl,
        defaults=defaults,
        description=description,
    )


PRESETS: dict[str, Preset] = {
    "turbo": Preset(
        name="turbo",
        dit_dir="acestep-v15-turbo",
        repo=MAIN_REPO,
        repo_subfolder="acestep-v15-turbo",
        is_turbo=True,
        is_xl=False,
        defaults=_TURBO,
        description="2B turbo: 8 steps, no guidance (default model)",
    ),
    "turbo-shift1": _separate(
        "turbo-shift1",
        is_turbo=True,
        is_xl=False,
        defaults=dataclasses.replace(_TURBO, shift=1.0),
        description="2B turbo trained for shift 1",
    ),
    "turbo-shift3": _separate(
        "turbo-shift3",
        is_turbo=True,
        is_xl=False,
        defaults=_TURBO,
        description="2B turbo trained for shift 3",
    ),
    "base": _separate(
        "base",
        is_turbo=False,
        is_xl=False,
        defaults=_GUIDED,
        description="2B base: all six tasks, guided sampling",
    ),
    "sft": _separate(
        "sft",
        is_turbo=False,
        is_xl=False,
        defaults=_GUIDED,
        description="2B supervised fine-tune, guided sampling",
    ),
    "xl-turbo": _separate(
        "xl-turbo",
        is_turbo=True,
        is_xl=True,
        defaults=_TURBO,
        description="XL (about 4B) turbo: 8 steps, no guidance",
    ),
    "xl-base": _separate(
        "xl-base",
        is_turbo=False,
        is_xl=True,
        defaults=_GUIDED,
        description="XL (about 4B) base, guided sampling",
    ),
    "xl-sft": _separate(
        "xl-sft",
        is_turbo=False,
        is_xl=True,
        defaults=_GUIDED,
        description="XL (about 4B) supervised fine-tune, guided sampling",
    ),
}
DEFAULT_PRESET = "turbo"


def get_preset(name: str) -> Preset:
    """Looks a preset up by name (`turbo`, `base`, ...) or by its folder name (`acestep-v15-base`).

    Raises:
        InvalidRequest: unknown name (field `model`).
    """
    preset = PRESETS.get(name) or preset_for_dit_dir(name)
    if preset is None:
        raise InvalidRequest("model", f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return preset


def preset_for_dit_dir(dirname: str) -> Preset | None:
    """The preset whose checkpoint folder is called `dirname`, if any."""
    for preset in PRESETS.values():
        if preset.dit_dir == dirname:
            return preset
    return None


def defaults_for(is_turbo: bool) -> DiffusionDefaults:
    """Defaults for a checkpoint that matches no preset, from its `config.is_turbo`."""
    return _TURBO if is_turbo else _GUIDED


def embedded_dir() -> Path:
    """Folder of the bundled embedded model inside the installed package (it may be absent).

    Resolved through `importlib.resources`, so it follows the package wherever it is installed; a package
    imported from a zip file yields a path that does not exist, which reads as "not bundled".
    """
    return Path(str(importlib.resources.files("encore") / "assets" / EMBEDDED_NAME))


def embedded_available() -> bool:
    """True when the bundled embedded model is complete (its `embedded.json` marker exists)."""
    return (embedded_dir() / EMBEDDED_MARKER).is_file()
