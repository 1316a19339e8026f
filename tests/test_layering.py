"""The layering the design asks for, read from the source: each folder of the tree is a layer, a module imports
only from its own layer or lower ones, no two stages import each other (they meet only in run directories,
through secondthought.runs), no import circle, and only the modules that orchestrate Ray import it."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "secondthought"

LAYERS = (
    ("secondthought.chains",),
    ("secondthought.config", "secondthought.console"),
    ("secondthought.data", "secondthought.runs", "secondthought.tracking", "secondthought.runtime"),
    ("secondthought.models", "secondthought.decoding", "secondthought.training"),
    ("secondthought.prepare", "secondthought.sft", "secondthought.rl", "secondthought.evaluate",
     "secondthought.serving"),
    ("secondthought.pipeline", "secondthought.transfer", "secondthought.commands"),
    ("secondthought.cli", "jobs", "serve", "cluster"),
)
"""Lowest first, as module-name prefixes (a folder, or a module directly in secondthought/)."""
STAGES = ("secondthought.prepare", "secondthought.sft", "secondthought.rl", "secondthought.evaluate")
"""They talk only through run directories."""
RAY = {"secondthought.runtime", "secondthought.cli", "secondthought.prepare.stage", "secondthought.sft.driver",
       "secondthought.sft.backend",
       "secondthought.sft.worker", "secondthought.rl.actors", "secondthought.rl.driver", "secondthought.rl.group",
       "secondthought.rl.placement", "secondthought.evaluate.driver"}
"""The only modules of the library that import Ray: the rest is pure (edit chains, decoding, PPO math, judges)."""


def module_names() -> dict[str, Path]:
    names = {}
    for folder in (PACKAGE, ROOT / "jobs", ROOT / "serve", ROOT / "cluster"):
        for path in folder.rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
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


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layer_of(module: str) -> int | None:
    return next((i for i, layer in enumerate(LAYERS) for prefix in layer if _under(module, prefix)), None)


def stage_of(module: str) -> str | None:
    return next((stage for stage in STAGES if _under(module, stage)), None)


def ours(path: Path) -> set[str]:
    """The project's modules ``path`` imports (a name imported from a module counts as that module)."""
    names = module_names()
    return {m if m in names else m.rpartition(".")[0] for m in imports(path)
            if m in names or m.rpartition(".")[0] in names}


def test_every_module_has_a_layer():
    assert not [name for name in module_names() if name != "secondthought" and layer_of(name) is None]


def test_no_module_imports_from_a_higher_layer():
    for name, path in module_names().items():
        mine = layer_of(name)
        higher = {m for m in ours(path) if (layer_of(m) or 0) > (mine or 0)}
        assert not higher, f"{name} (layer {mine}) imports {sorted(higher)} from above"


def test_no_stage_imports_another_stage():
    for name, path in module_names().items():
        mine = stage_of(name)
        if mine is None:
            continue
        others = {m: stage_of(m) for m in ours(path) if stage_of(m) not in (None, mine)}
        assert not others, f"{name} (stage {mine}) imports {others}"


def test_no_import_circle():
    graph = {name: ours(path) - {name} for name, path in module_names().items()}
    done: set[str] = set()

    def visit(node: str, trail: list[str]) -> None:
        if node in trail:
            raise AssertionError("import circle: " + " -> ".join(trail[trail.index(node):] + [node]))
        if node in done:
            return
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, trail + [node])
        done.add(node)

    for name in sorted(graph):
        visit(name, [])


def test_only_the_orchestrating_modules_import_ray():
    assert RAY <= set(module_names())
    for name, path in module_names().items():
        if not name.startswith("secondthought") or name in RAY:
            continue
        assert not {m for m in imports(path) if m == "ray" or m.startswith("ray.")}, f"{name} imports Ray"


def test_serving_imports_the_inference_side_only():
    """serve/ (the Serve application) and secondthought/serving import no training or evaluation stage."""
    serving = {name: path for name, path in module_names().items()
               if _under(name, "serve") or _under(name, "secondthought.serving")}
    for name, path in serving.items():
        staged = {m: stage_of(m) for m in ours(path) if stage_of(m)}
        assert not staged, f"{name} imports {staged}"
    assert "secondthought.serving.replica" in ours(ROOT / "serve" / "app.py")


def test_the_tree_stays_small():
    """At most 12 modules directly in secondthought/, none over 400 lines."""
    top = [p for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    assert len(top) <= 12, sorted(p.name for p in top)
    long = {name: n for name, path in module_names().items() if (n := len(path.read_text().splitlines())) > 400}
    assert not long, long
