"""The house rules of the library's layout (`minidiff.command.import_graph`), and the README that states them."""

from minidiff.command.import_graph import PACKAGE, broken_rules, modules

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
    }
    problems = broken_rules(edges)
    assert "sampling (stages) imports machinery.sharding (machinery), a room after its own" in problems
    assert "stage denoiser imports captions, which is not an earlier stage" in problems
    assert "machinery.atomic (machinery) imports training (training), a room after its own" in problems
    assert any(p.startswith("import cycle: captions -> denoiser -> captions") for p in problems)
    assert len(problems) == 4, problems


def test_the_readme_says_where_every_module_is():
    text = README.read_text()
    section = text[text.index("## What is where"):]
    section = section[: section.index("\n## ", 1)]
    for module, path in modules().items():
        if path.name != "__init__.py":
            relative = str(path.relative_to(PACKAGE))
            assert f"`{relative}`" in section or f"`minidiff/{relative}`" in section, relative
    assert "python -m minidiff.command.import_graph" in section
