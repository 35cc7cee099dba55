"""The shape of the repository: the lecture at the root, the support it stands on in one folder,
and imports that run one way (support never imports a file above it; no circle anywhere)."""
import ast, os, sys

from conftest import ROOT

LECTURE = {"prepare", "cmbert", "train", "eval_clue"}
STDLIB = set(sys.stdlib_module_names)


def modules():
    """{name: path} of the repository's Python modules: the root's files and support.<name>."""
    found = {f[:-3]: os.path.join(ROOT, f) for f in os.listdir(ROOT) if f.endswith(".py")}
    found.update({f"support.{f[:-3]}": os.path.join(ROOT, "support", f)
                  for f in os.listdir(os.path.join(ROOT, "support")) if f.endswith(".py") and f != "__init__.py"})
    return found


def imports(name, path, top_level_only=False):
    """The repository modules (and, as "<other>:<name>", the outside packages) that a module imports."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    nodes = tree.body if top_level_only else ast.walk(tree)
    package = name.rpartition(".")[0]
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = (package if node.level else "") + ("." if node.level and node.module else "") + (node.module or "")
            targets = [base] + ([f"{base}.{a.name}" for a in node.names] if base == "support" or node.level else [])
        else:
            continue
        out.update(targets)
    return out


def test_the_root_shows_the_design():
    root_py = sorted(f for f in os.listdir(ROOT) if f.endswith(".py"))
    assert LECTURE <= {f[:-3] for f in root_py}
    assert len(root_py) <= 8, root_py


def test_imports_run_one_way_and_close_no_circle():
    mods = modules()
    graph = {name: {t for t in imports(name, path) if t in mods} for name, path in mods.items()}
    for name, targets in graph.items():
        if name.startswith("support."):
            assert all(t.startswith("support.") for t in targets), f"{name} imports {targets} (a file above it)"
    for name in LECTURE:
        commands = {m for m in mods if not m.startswith("support.") and m not in LECTURE}
        assert not graph[name] & commands, f"{name} imports a command: {graph[name] & commands}"
    assert not any("support.hf_cmbert" in t for t in graph.values()), "hf_cmbert.py runs only inside exports"

    state = {}

    def visit(node, path):  # depth-first search: a node met again while open closes a circle
        state[node] = "open"
        for nxt in graph[node]:
            assert state.get(nxt) != "open", f"import circle: {' -> '.join(path + [nxt])}"
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"
    for name in graph:
        if name not in state:
            visit(name, [name])


def test_cmbert_imports_only_torch_and_the_standard_library_at_its_top():
    """cmbert.py travels alone inside RMSNorm exports (with support/hf_cmbert.py)."""
    top = imports("cmbert", os.path.join(ROOT, "cmbert.py"), top_level_only=True)
    assert all(t.split(".")[0] in STDLIB | {"torch"} for t in top), top
