"""The code's layering, read from its imports: stages below the pipeline, the pipeline below
the server, the store beside it; the server and the CLI talk to the bot through one narrow
interface (bot/service.py); no import cycles."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from bot.pipeline import Pipeline
from bot.service import BotService

ROOT = Path(__file__).resolve().parent.parent
# Run at the top: the commands, the server, and the tools built on both.
TOP = ("bot.cli", "bot.server", "bot.replay", "bot.evals", "bot.finetune")
# What the pipeline's clients may import from bot.pipeline: its values, not the class.
PIPELINE_VALUES = {"TurnContext", "TurnResult", "OnDelta"}
COMPOSITION_ROOTS = {"bot.server.app"}  # builds the concrete pipeline and hands it down


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in (ROOT / "bot").rglob("*.py")}


def _imported(node: ast.Import | ast.ImportFrom, module: str) -> set[str]:
    """The bot modules an import statement loads (``from pkg import sub``: ``pkg.sub``)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in MODULES}
    base = node.module or ""
    if node.level:  # relative: from the module's package upwards
        package = module.split(".")
        if MODULES[module].name != "__init__.py":
            package = package[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join([*package, base] if base else package)
    out = set()
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        out.add(sub if sub in MODULES else base)
    return out & set(MODULES)


def _imports(module: str, *, lazy: bool) -> set[str]:
    """The bot modules ``module`` imports at run time (not under ``TYPE_CHECKING``);
    ``lazy``: inside functions too, else only what runs when the module is imported."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not lazy:
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.update(_imported(node, module))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(MODULES[module].read_text(encoding="utf-8")))
    found.discard(module)
    return found


def _cycles() -> list[list[str]]:
    """Strongly connected groups of modules (Tarjan) in the import-time graph."""
    graph = {m: _imports(m, lazy=False) for m in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in graph:
        if v not in index:
            connect(v)
    return groups


def test_no_import_cycles() -> None:
    """Every module can be imported on its own: no two modules need each other first."""
    assert _cycles() == []


def test_nothing_below_the_server_imports_it() -> None:
    """The pipeline, its stages and the store work without a server (tests, CLI, replay)."""
    for module in MODULES:
        if module.startswith(TOP):
            continue
        upward = {m for m in _imports(module, lazy=True) if m.startswith(TOP)}
        assert not upward, f"{module} imports {sorted(upward)}"


def test_the_store_and_the_pipeline_do_not_know_each_other() -> None:
    """The store keeps what the server gives it; the pipeline never touches the database."""
    for module in MODULES:
        deps = _imports(module, lazy=True)
        if module.startswith("bot.store"):
            assert not {m for m in deps if m.startswith(("bot.pipeline", "bot.service"))}, module
        if module in ("bot.pipeline", "bot.service") or not module.startswith(("bot.store", *TOP)):
            assert not {m for m in deps if m.startswith("bot.store")}, module


def _pipeline_names(module: str) -> set[str]:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    return {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "bot.pipeline"
        for alias in node.names
    }


def _service_members() -> set[str]:
    return {name for name in vars(BotService) if not name.startswith("_")}


def _reaches_into_pipeline(path: Path) -> list[str]:
    """``<x>.pipeline.<attr>`` uses whose ``attr`` is not part of ``BotService``."""
    allowed = _service_members()
    bad = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Attribute) or node.attr in allowed:
            continue
        owner = node.value
        named = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", None)
        if named in ("pipeline", "bot"):
            bad.append(f"{path.name}:{node.lineno} .{node.attr}")
    return bad


def test_the_server_and_the_cli_use_the_narrow_interface() -> None:
    """The server and the CLI ask the bot by intent (BotService), never for its parts."""
    clients = [m for m in MODULES if m.startswith("bot.server")] + ["bot.cli"]
    for module in clients:
        names = _pipeline_names(module)
        if module not in COMPOSITION_ROOTS and module != "bot.cli":
            assert names <= PIPELINE_VALUES, f"{module} imports {sorted(names)}"
        if module not in COMPOSITION_ROOTS:
            assert _reaches_into_pipeline(MODULES[module]) == []


def test_the_pipeline_implements_the_interface() -> None:
    """Every method the server may call exists on the pipeline with the same parameters."""
    for name in _service_members():
        wanted = inspect.getattr_static(BotService, name)
        given = inspect.getattr_static(Pipeline, name)
        if isinstance(wanted, property):
            assert isinstance(given, property), name
            continue
        assert inspect.iscoroutinefunction(given) == inspect.iscoroutinefunction(wanted), name
        assert list(inspect.signature(given).parameters) == list(
            inspect.signature(wanted).parameters
        ), name
