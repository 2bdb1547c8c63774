"""The layers import downward only, with no import cycle between files (imports inside functions
count): README's project map, checked by parsing every module of the project."""
import ast

from conftest import ROOT

# lowest first; a module may import its own layer and the ones before it
LAYERS = (
    ("base", ("utils", "utils.base")),
    ("nets", ("nets",)),
    ("data", ("utils.data",)),
    ("training", ("utils.training",)),
    ("methods", ("methods",)),
    ("repro", ("repro",)),
    ("scripts", ("train_scratch", "train_nasty", "train_kd", "evaluate", "reproduce")),
    ("bench", ("bench",)),
    ("tests", ("tests",)),
)
PACKAGES = ("utils", "nets", "methods", "repro", "bench", "tests")


def module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules():
    files = [p for p in ROOT.glob("*.py")]
    for package in PACKAGES:
        files += [p for p in (ROOT / package).rglob("*.py") if "fixtures" not in p.parts]
    return {module_name(p): p for p in files}


def layer_of(module):
    """(index, name) of the layer of `module`: the longest matching prefix decides."""
    best = None
    for index, (name, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[2]:
                    best = (index, name, len(prefix))
    return best[:2] if best else None


def resolve(module, path, node, modules):
    """The project modules an import statement of `module` reads (tests and bench import their
    helpers by file name: conftest, configs, ...)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            package = package[:len(package) - node.level + 1]
            base = ".".join(package + ([node.module] if node.module else []))
        names = [f"{base}.{alias.name}" for alias in node.names] + [base]
    found = set()
    by_file = module.split(".")[0] in ("tests", "bench")  # a folder on sys.path: helpers by name
    for name in names:
        for candidate in [name] + ([f"tests.{name}", f"bench.{name}"] if by_file else []):
            if candidate in modules:
                found.add(candidate)
    # `from utils.data import registry` reads utils.data.registry, not the package only
    if isinstance(node, ast.ImportFrom) and any(n != names[-1] and n in found for n in names[:-1]):
        found.discard(names[-1])
    return found


def discovered(module, path, modules):
    """A package that imports its modules by discovery (pkgutil over __path__: nets/, methods/,
    utils/data/) imports every module of its folder."""
    if path.name != "__init__.py" or "iter_modules(__path__)" not in path.read_text():
        return set()
    return {m for m in modules if m.rsplit(".", 1)[0] == module and m != module}


def import_graph():
    modules = project_modules()
    graph = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        graph[module] = discovered(module, path, modules)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[module] |= resolve(module, path, node, modules) - {module}
    return graph


def upward_imports(graph):
    found = []
    for module, targets in graph.items():
        mine = layer_of(module)
        for target in sorted(targets):
            theirs = layer_of(target)
            if theirs and mine and theirs[0] > mine[0]:
                found.append(f"{module} ({mine[1]}) imports {target} ({theirs[1]})")
    return found


def cycles(graph):
    """The import cycles (strongly connected components of more than one module), Tarjan's way."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_module_has_a_layer():
    assert [m for m in import_graph() if layer_of(m) is None] == []


def test_no_module_imports_a_higher_layer():
    assert upward_imports(import_graph()) == []


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_the_checks_catch_what_they_promise():
    graph = {"utils.base.errors": {"methods.kd"}, "methods.kd": {"utils.base.errors"},
             "repro.report": {"repro.matrix"}, "repro.matrix": {"repro.report"}}
    assert upward_imports(graph) == ["utils.base.errors (base) imports methods.kd (methods)"]
    assert cycles(graph) == [["methods.kd", "utils.base.errors"], ["repro.matrix", "repro.report"]]


def test_a_benchmark_importing_a_test_helper_is_caught():
    node = ast.parse("from configs import write_config").body[0]
    assert resolve("bench.throughput", ROOT / "bench/throughput.py", node,
                   {"tests.configs"}) == {"tests.configs"}


def test_a_discovering_package_imports_its_modules():
    assert {"methods.kd", "methods.stingy"} <= import_graph()["methods"]
    assert "nets.resnet" in import_graph()["nets"]


def test_imports_inside_functions_count():
    tree = ast.parse("def f():\n    from methods import kd\n")
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom))
    assert resolve("utils.base.errors", ROOT / "utils/base/errors.py", node,
                   {"methods", "methods.kd"}) == {"methods.kd"}
