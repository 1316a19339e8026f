"""The layering the design asks for, read from the source: pure modules import neither Ray nor a stage, and
no stage imports another stage (they meet only in run directories, through secondthought.runs)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "secondthought"

STAGES = {
    "prepare": ("secondthought.prepare",),
    "sft": ("secondthought.sft", "secondthought.sft_worker"),
    "rl": ("secondthought.rl.driver", "secondthought.rl.actors", "secondthought.rl.group",
           "secondthought.rl.placement"),
    "eval": ("secondthought.evaluate",),
}
ORCHESTRATORS = ("secondthought.cli", "secondthought.pipeline", "secondthought.transfer", "secondthought.runtime")
"""They compose stages (or start Ray for them) by design."""


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imports(path: Path) -> set[str]:
    """Every module named by an import anywhere in the file, also inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def stage_of(module: str) -> str | None:
    return next((stage for stage, members in STAGES.items() if module in members), None)


def test_the_stage_table_names_real_modules():
    names = module_names()
    for members in STAGES.values():
        assert set(members) <= set(names), set(members) - set(names)
    assert set(ORCHESTRATORS) <= set(names)


def test_pure_modules_import_neither_ray_nor_a_stage():
    pure = {name: path for name, path in module_names().items()
            if stage_of(name) is None and name not in ORCHESTRATORS}
    assert {"secondthought.edits", "secondthought.runs", "secondthought.inference", "secondthought.rl.ppo",
            "secondthought.training", "secondthought.config", "secondthought.judge"} <= set(pure)
    for name, path in pure.items():
        found = imports(path)
        assert not {m for m in found if m == "ray" or m.startswith("ray.")}, f"{name} imports Ray"
        assert not {m for m in found if stage_of(m)}, f"{name} imports a stage: {sorted(m for m in found if stage_of(m))}"


def test_no_stage_imports_another_stage():
    for name, path in module_names().items():
        mine = stage_of(name)
        if mine is None:
            continue
        others = {m: stage_of(m) for m in imports(path) if stage_of(m) not in (None, mine)}
        assert not others, f"{name} (stage {mine}) imports {others}"


def test_serving_imports_the_inference_side_only():
    """serve/ (the Serve application) and the serving library import no training or evaluation stage."""
    serving = [*sorted((PACKAGE.parent / "serve").glob("*.py")),
               *(PACKAGE / f"{name}.py" for name in ("api", "realign", "engine"))]
    for path in serving:
        staged = {m: stage_of(m) for m in imports(path) if stage_of(m)}
        assert not staged, f"{path.name} imports {staged}"
    assert "secondthought.engine" in imports(PACKAGE.parent / "serve" / "app.py")
