"""Which package may import which, read from the source: every static ``import`` of every module under
components/ and flows/ (imports inside functions included, relative imports resolved), checked against
the rules below without importing anything. Importing the pure modules creates no file.
"""

import ast
import subprocess
import sys
from collections import defaultdict
from itertools import pairwise
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PRODUCT = ("components", "flows")
ROOTS = (*PRODUCT, "benchmarks", "infra")
FIRST_PARTY = ("components", "flows", "tests", "benchmarks", "infra")
TOOLS = frozenset({"mlflow", "prefect", "great_expectations", "dvc", "dvc_data"})  # only components.adapters calls them
# the ranking rules (stdlib only) are data's: how a ranking becomes comparison rows
TRAINING_MAY_IMPORT = (
    "components.config",
    "components.models",
    "components.io",
    "components.training",
    "components.data.ranking",
)

PURE_MODULES = [
    "components.config",
    "components.io",
    "components.task.prompts",
    "components.task.gold_judge",
    "components.task.demonstrator",
    "components.task.labeler",
    "components.task.generator",
    "components.task.review_task",
    "components.data.environment",
    "components.data.dataset",
    "components.data.prepare",
    "components.data.expectations",
    "components.data.files",
]


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def top(name: str) -> str:
    return name.split(".")[0]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_modules() -> dict[str, Path]:
    """Every module under components/, flows/, benchmarks/ and infra/, by dotted name."""
    return {module_name(path): path for root in ROOTS for path in sorted((REPO / root).rglob("*.py"))}


ALL_MODULES = source_modules()
MODULES = {name: path for name, path in ALL_MODULES.items() if top(name) in PRODUCT}


def imports_in(source: str, module: str, is_package: bool = False) -> set[str]:
    """The modules ``module`` imports: ``import a.b`` gives ``a.b``; ``from a import b`` gives ``a.b`` when that is
    one of the project's modules, else ``a``; relative imports are resolved against ``module``'s package."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            for alias in node.names:
                names.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in ALL_MODULES else base)
    return names


def imported(module: str, path: Path) -> set[str]:
    return imports_in(path.read_text(encoding="utf-8"), module, path.name == "__init__.py")


ALL_EDGES: list[tuple[str, str]] = sorted(
    (module, target) for module, path in ALL_MODULES.items() for target in imported(module, path)
)
EDGES = [(module, target) for module, target in ALL_EDGES if top(module) in PRODUCT]  # the product's own


def first_party(name: str) -> bool:
    return top(name) in FIRST_PARTY


def stdlib(name: str) -> bool:
    return top(name) in sys.stdlib_module_names


def listing(edges: list[tuple[str, str]]) -> str:
    return "\n".join(f"  {module} -> {target}" for module, target in edges)


def test_the_walk_sees_imports_inside_functions_and_resolves_relative_ones():
    source = (
        "import torch.nn\nfrom .files import DATASETS\ndef f():\n    from . import files\n    from ..io import dumps\n"
    )
    assert imports_in(source, "components.data.probe") == {
        "torch.nn",
        "components.data.files",
        "components.io",
    }
    assert imports_in("from . import files\n", "components.data", is_package=True) == {"components.data.files"}
    assert ("flows.execution.ppo_worker", "components.evaluation.report") in EDGES  # imported inside main()
    assert ("components.adapters.tracking", "mlflow") in EDGES


def test_training_imports_only_config_models_io_and_libraries_other_than_the_tools():
    """components.training: the standard library, third-party libraries other than mlflow, prefect,
    great_expectations and dvc, and components.config, components.models, components.io."""
    offending = [
        (module, target)
        for module, target in EDGES
        if within(module, "components.training")
        and (
            top(target) in TOOLS
            or (first_party(target) and not any(within(target, allowed) for allowed in TRAINING_MAY_IMPORT))
        )
    ]
    assert not offending, "components.training may import only the standard library, libraries other than " + (
        f"{sorted(TOOLS)} and {', '.join(TRAINING_MAY_IMPORT)}; it imports:\n{listing(offending)}"
    )


def test_evaluation_never_imports_training():
    """Evaluation reads trained models through components.models (scoring, decoding), never the training code."""
    offending = [(m, t) for m, t in EDGES if within(m, "components.evaluation") and within(t, "components.training")]
    assert not offending, f"components.evaluation must not import components.training:\n{listing(offending)}"


def test_only_the_adapters_import_mlflow_anywhere():
    """Not the flows, the benchmarks or the infra either: every MLflow call goes through components.adapters."""
    offending = [(m, t) for m, t in ALL_EDGES if top(t) == "mlflow" and not within(m, "components.adapters")]
    assert not offending, f"only components.adapters may import mlflow:\n{listing(offending)}"


def test_nothing_imports_the_tests():
    offending = [(m, t) for m, t in ALL_EDGES if top(t) == "tests"]
    assert not offending, f"the product, the benchmarks and the infra must not import tests:\n{listing(offending)}"


def test_the_ranking_rules_import_only_the_standard_library():
    """Training, the task and data all read them, so they stand on nothing of the project's."""
    targets = {t for m, t in EDGES if m == "components.data.ranking"}
    assert targets and all(stdlib(t) or t == "__future__" for t in targets), targets


def test_no_two_modules_share_a_name():
    """A module's file name says which one it is: ``environment.py`` twice (or ``rounds.py``) read as one."""
    names = defaultdict(list)
    for name, path in ALL_MODULES.items():
        if path.name != "__init__.py":
            names[path.name].append(name)
    shared = {file: modules for file, modules in names.items() if len(modules) > 1}
    assert not shared, f"modules sharing a file name: {shared}"


# flows' rooms, bottom up: each may import the components and the rooms before it; only the entry points at flows' top
# level (pipeline, deploy, data_cli, commands) import any room
ROOMS = ("flows.execution", "flows.labelling", "flows.tasks")


def room_of(name: str) -> str | None:
    return next((room for room in ROOMS if within(name, room)), "flows" if within(name, "flows") else None)


def test_flows_rooms_import_only_the_rooms_below_them():
    """execution (where and how a stage runs, the launched workers) < labelling (people) < tasks (the flow's tasks) <
    the entry points: no room imports a room above it or an entry point."""
    offending = []
    for module, target in EDGES:
        source, imported_room = room_of(module), room_of(target)
        if source not in ROOMS or imported_room in (None, source):
            continue
        if imported_room == "flows" or ROOMS.index(imported_room) > ROOMS.index(source):
            offending.append((module, target))
    assert not offending, f"a room of flows imports upwards:\n{listing(offending)}"


def test_components_never_import_flows():
    offending = [(m, t) for m, t in EDGES if within(m, "components") and within(t, "flows")]
    assert not offending, f"components must not import flows:\n{listing(offending)}"


def test_only_the_adapters_import_mlflow_prefect_great_expectations_or_dvc():
    offending = [
        (m, t) for m, t in EDGES if within(m, "components") and not within(m, "components.adapters") and top(t) in TOOLS
    ]
    assert not offending, f"only components.adapters may import {sorted(TOOLS)}:\n{listing(offending)}"


def test_only_the_task_choice_picks_the_embedded_task():
    """Generic code gets the task through the Environment interface that flows.execution.task_choice hands it."""
    offending = [
        (m, t)
        for m, t in EDGES
        if within(t, "components.task") and not within(m, "components.task") and m != "flows.execution.task_choice"
    ]
    assert not offending, f"only flows.execution.task_choice may import components.task:\n{listing(offending)}"


def defined_names(source: str) -> set[str]:
    """The names a module binds at its top level: classes, functions and assigned names."""
    names: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def test_there_is_one_ranker_type():
    defining = [m for m, path in MODULES.items() if "Ranker" in defined_names(path.read_text(encoding="utf-8"))]
    assert defining == ["components.data.ranking"]


@pytest.mark.slow  # ~10 s: imports every module, the tools' included
def test_a_run_on_user_files_never_loads_the_embedded_task(tmp_path):
    """Every module outside components.task imported, the flow's choices made for ``data.source: files`` (no
    environment, no vocabulary check, a word tokenizer over the data's own words, no labeller): nothing of the
    task is loaded."""
    modules = sorted(m for m in MODULES if not within(m, "components.task"))
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules)
    code += (
        "from components.config import load_config\n"
        "from components.models.tokenizer import words_of\n"
        "from components.training import recipe\n"
        "from components.adapters.data_stages import checked_vocabulary\n"
        "from flows.execution.task_choice import environment_for\n"
        "files = {'demonstrations': 'd.jsonl', 'preferences': 'p.jsonl', 'eval_prompts': 'e.jsonl'}\n"
        "judge = {'kind': 'python', 'entry_point': 'tests.judges:words_of_praise'}\n"
        "cfg = load_config('smoke', {'data': {'source': 'files', 'files': files}, 'evaluation': {'judge': judge}})\n"
        "assert environment_for(cfg) is None and checked_vocabulary(cfg, None) is None\n"
        "tokenizer = recipe.make_tokenizer(cfg, words_of(['Hello there, friend.']))\n"
        "assert tokenizer.tokenize('hello friend.') == ['hello', 'friend', '.']\n"
        "loaded = sorted(name for name in sys.modules if name.startswith('components.task'))\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


def package(name: str) -> str:
    """The node a module belongs to: ``components.<package or top-level module>``, or ``flows``."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "components" and len(parts) > 1 else parts[0]


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the groups of nodes that reach each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_no_import_cycles_between_packages():
    """components.data, models, training, evaluation, adapters and the top-level modules (io, config, locks,
    offline) as nodes, flows as one more: the package graph has no cycle."""
    graph: dict[str, set[str]] = defaultdict(set)
    crossing: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for module, target in EDGES:
        if not (within(target, "components") or within(target, "flows")):
            continue
        source_node, target_node = package(module), package(target)
        graph[source_node]
        if source_node != target_node:
            graph[source_node].add(target_node)
            crossing[(source_node, target_node)].append((module, target))
    cycles = [group for group in strongly_connected(graph) if len(group) > 1]
    report = []
    for group in cycles:
        path = cycle_through(graph, group)
        hops = "\n".join(f"{a} -> {b}:\n{listing(crossing[(a, b)])}" for a, b in pairwise(path))
        report.append(f"import cycle {' -> '.join(path)} (packages on cycles: {', '.join(group)})\n{hops}")
    assert not cycles, "\n".join(report)


def cycle_through(graph: dict[str, set[str]], group: list[str]) -> list[str]:
    """One shortest cycle from the first node of a strongly connected ``group`` back to it."""
    start, members = group[0], set(group)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(graph[node] & members):
            if nxt == start:
                return [*paths[node], start]
            if nxt not in paths:
                paths[nxt] = [*paths[node], nxt]
                queue.append(nxt)
    raise AssertionError(f"{group} is not strongly connected")


def test_pure_modules_import_without_creating_a_file_or_loading_the_tools(tmp_path):
    code = "import sys\n" + "".join(f"import {m}\n" for m in PURE_MODULES)
    code += f"loaded = sorted({{name.split('.')[0] for name in sys.modules}} & {set(TOOLS)!r})\n"
    code += "assert not loaded, f'loaded {loaded}'\n"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing created on import


def test_stay_offline_turns_every_tool_s_telemetry_off(monkeypatch):
    from components.offline import TELEMETRY_OFF, stay_offline

    for key in TELEMETRY_OFF:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "false")  # an explicit user choice wins
    stay_offline()
    import os

    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert os.environ["GX_ANALYTICS_ENABLED"] == "false"
    assert os.environ["DVC_NO_ANALYTICS"] == "1"
    assert os.environ["DO_NOT_TRACK"] == "1"
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "false"


def test_every_package_says_what_it_holds_and_what_it_may_import():
    packages = ["components.data", "components.task", "components.models", "components.training"]
    packages += ["components.evaluation", "components.labelling"]
    packages += ["components.adapters", "flows", *ROOMS]
    for name in packages:
        docstring = ast.get_docstring(ast.parse(MODULES[name].read_text(encoding="utf-8"))) or ""
        lines = docstring.splitlines()
        assert len(lines) == 2 and "import" in lines[1], (
            f"{name}/__init__.py: two lines, what it holds, what it may import"
        )


def test_test_modules_share_helpers_not_each_other():
    """What several test modules need lives in helper modules (tests/data_files.py, tests/flow_helpers.py, ...),
    so one test module never imports another."""
    offending = []
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        for target in imports_in(path.read_text(encoding="utf-8"), module_name(path)):
            if target.startswith("tests.") and target.rpartition(".")[2].startswith("test_"):
                offending.append((module_name(path), target))
    assert not offending, f"test modules import test modules:\n{listing(offending)}"
