"""The house rule on signatures: no function in the product, the benchmarks or infra takes more than
``MAX_PARAMETERS`` parameters; more travel as a typed bundle (``Harness``, ``RLModels``, ``Decoder``, ...)."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOTS = ("components", "flows", "benchmarks", "infra")
MAX_PARAMETERS = 8


def parameter_count(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Every parameter a caller may pass (positional-only, ordinary, keyword-only, ``*args`` and ``**kwargs`` one
    each), a method's ``self`` or ``cls`` not counted."""
    args = function.args
    named = [*args.posonlyargs, *args.args]
    if named and named[0].arg in ("self", "cls"):
        named = named[1:]
    return len(named) + len(args.kwonlyargs) + (args.vararg is not None) + (args.kwarg is not None)


def functions(source: str):
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def test_the_count_is_what_a_caller_can_pass():
    source = (
        "def f(a, b, /, c, *rest, d, e=1, **more): pass\n"
        "class C:\n"
        "    def m(self, x, y): pass\n"
        "    def n(x): pass\n"
        "    async def o(cls, *, k): pass\n"
    )
    assert {f.name: parameter_count(f) for f in functions(source)} == {"f": 7, "m": 2, "n": 1, "o": 1}


def test_no_function_takes_more_than_eight_parameters():
    over = [
        f"{path.relative_to(REPO)}:{function.lineno} {function.name} ({parameter_count(function)})"
        for root in ROOTS
        for path in sorted((REPO / root).rglob("*.py"))
        for function in functions(path.read_text(encoding="utf-8"))
        if parameter_count(function) > MAX_PARAMETERS
    ]
    assert not over, "more than 8 parameters: bundle them in a typed dataclass\n" + "\n".join(over)
