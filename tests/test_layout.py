"""The house rules of the library's layout (`minidiff.command.import_graph`), and the README that states them."""

import ast
import subprocess
import sys

from minidiff.command.import_graph import PACKAGE, SHARED_BY_STAGES, STAGES, broken_rules, modules

README = PACKAGE.parent / "README.md"


def test_the_library_keeps_its_house_rules():
    assert broken_rules() == []


def test_a_broken_rule_is_reported():
    edges = {
        "sampling": {"machinery.sharding", "corruption"},  # a stage reaching into a run's machinery
        "denoiser": {"captions", "attention"},  # stage 2 importing stage 3
        "captions": {"denoiser"},  # ... and back: a cycle
        "machinery.atomic": {"training"},  # machinery importing what it serves
        "training": {"model", "datasets.base"},  # fine
        "cascade": {"sampling"},  # a new module in no room
    }
    problems = broken_rules(edges)
    assert "sampling (stages) imports machinery.sharding (machinery), a room after its own" in problems
    assert "stage denoiser imports captions, which is not an earlier stage" in problems
    assert "machinery.atomic (machinery) imports training (training), a room after its own" in problems
    assert any(p.startswith("import cycle: captions -> denoiser -> captions") for p in problems)
    assert "cascade is in no room: give it one (ROOMS here, and the README's table)" in problems
    assert len(problems) == 5, problems


def test_the_readme_says_where_every_module_is():
    text = README.read_text()
    section = text[text.index("## What is where"):]
    section = section[: section.index("\n## ", 1)]
    for module, path in modules().items():
        if path.name != "__init__.py":
            relative = str(path.relative_to(PACKAGE))
            assert f"`{relative}`" in section or f"`minidiff/{relative}`" in section, relative
    assert "python -m minidiff.command.import_graph" in section


def test_importing_a_stage_loads_only_the_stages_before_it():
    """Not just the source (above): in a fresh interpreter, `import minidiff.<stage>` runs no other
    part of the library (the package's own `minidiff.load` is looked up when first used)."""
    for i, stage in enumerate(STAGES):
        code = (f"import sys, minidiff.{stage}; print(sorted(m for m in sys.modules if m.startswith('minidiff.')))")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        loaded = set(ast.literal_eval(result.stdout.strip()))
        allowed = {f"minidiff.{s}" for s in STAGES[: i + 1] + SHARED_BY_STAGES}
        assert loaded <= allowed, (stage, loaded - allowed)
