"""Import hygiene: layers import one way only (STYLE §4), and `import encore` stays cheap."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "encore"

# layer -> layers it must never import
FORBIDDEN = {
    "errors": {"nn", "models", "sampling", "tasks", "audio", "pipeline", "training", "data", "frontends"},
    "nn": {"models", "sampling", "tasks", "audio", "pipeline", "training", "data", "frontends"},
    "models": {"sampling", "tasks", "audio", "pipeline", "training", "data", "frontends"},
    "sampling": {"pipeline", "training", "data", "frontends", "audio"},
    "tasks": {"pipeline", "training", "data", "frontends", "audio"},
    "audio": {"pipeline", "training", "data", "frontends", "sampling", "tasks"},
    "utils": {"pipeline", "training", "data", "frontends", "models", "sampling", "tasks"},
    "pipeline": {"frontends", "training"},
    "training": {"frontends"},
    "data": {"frontends"},
    "eval": {"frontends"},
}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
    return out


def _layer_of(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def test_layers_import_one_way() -> None:
    violations = []
    for path in SRC.rglob("*.py"):
        layer = _layer_of(path)
        for mod in _imports(path):
            parts = mod.split(".")
            if parts[0] == "encore" and len(parts) > 1 and parts[1] in FORBIDDEN.get(layer, set()):
                violations.append(f"{path.relative_to(SRC)} imports {mod}")
    assert not violations, "\n".join(violations)


def test_frontends_do_not_import_torch_directly() -> None:
    offenders = [
        str(p.relative_to(SRC))
        for p in (SRC / "frontends").rglob("*.py")
        if any(m == "torch" or m.startswith("torch.") for m in _imports(p))
    ]
    assert not offenders, offenders


def test_import_encore_is_light() -> None:
    code = (
        "import sys, encore; heavy = [m for m in ('torch', 'gradio', 'fastapi', 'peft', 'transformers', 'diffusers')"
        " if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"import encore pulled in: {out}"
