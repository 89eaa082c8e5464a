"""The shape of the code: no import cycles between the package's modules, and the expert
contract (experts/protocol.py) satisfied by every kind of expert."""

from __future__ import annotations

import ast
from pathlib import Path

import logit_swarm
from logit_swarm.experts.protocol import Expert
from logit_swarm.search.memo import MemoExpert

ROOT = Path(logit_swarm.__file__).parent


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, top_level_only: bool) -> set[str]:
    """Modules of the package ``path`` imports (at module level, or anywhere)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("logit_swarm")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("logit_swarm"):
                continue
            for a in node.names:  # "from . import x" names a submodule
                out.add(f"{mod}.{a.name}" if (ROOT.parent / f"{mod}.{a.name}".replace(".", "/")).exists()
                        or (ROOT.parent / (f"{mod}.{a.name}".replace(".", "/") + ".py")).exists() else mod)
    return out


def graph(top_level_only: bool) -> dict[str, set[str]]:
    mods = {module_name(p): p for p in ROOT.rglob("*.py")}
    g = {}
    for m, p in mods.items():
        # Importing a package's submodule runs the package's __init__ first; that edge is not a
        # cycle of the code's own making, so parents are not counted as dependencies.
        deps = {d for d in imports_of(p, top_level_only) if d in mods and d != m and not m.startswith(d + ".")}
        g[m] = deps
    return g


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(g.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_cycles_between_modules():
    """Module-level imports, and also imports inside functions (a lazy import hides a cycle, it
    does not remove it). The package root's ``__version__`` read at call time is the one
    exception: the root re-exports the public names, so any module reading it is "below" it."""
    g = graph(top_level_only=False)
    for m in g:
        g[m].discard("logit_swarm")
    assert find_cycle(g) is None, " -> ".join(find_cycle(g))


def test_the_checker_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_hf_and_memo_experts_satisfy_the_expert_protocol(experts):
    e = experts["gpt2_a"]
    assert isinstance(e, Expert)
    assert isinstance(MemoExpert(e), Expert)
    assert not isinstance(object(), Expert)
