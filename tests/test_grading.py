"""The grader on a made-up class: a right answer, each common mistake, an empty copy, a notebook that raises
at import, one that loops forever, one that is not a notebook, one without its check cell, one that tries to
write outside its folder; the gradebook must say what each did, and grading must write only beside it."""

import csv
import time

import nbformat
import pytest

from minidiff.command.cli import main
from minidiff.course.mistakes import captions_and_guidance as mistakes

# A chapter of two exercises, small enough to run in a second: guidance, with its common mistakes, and a
# "run" whose result must come out below a bound.
SETUP = """import numpy as np
from minidiff.course.mistakes import captions_and_guidance as mistakes
from minidiff.course.exercises import check, check_below"""
GUIDANCE = """def my_guidance(conditional, unconditional, scale):
    raise NotImplementedError("Exercise: unconditional + scale (conditional - unconditional)")

def guidance_solution(conditional, unconditional, scale):
    return unconditional + scale * (conditional - unconditional)"""
GUIDANCE_CHECK = """def guided(conditional, unconditional, scale):
    return (1 - scale) * unconditional + scale * conditional

c, u = np.linspace(0.0, 1.0, 12).reshape(2, 2, 3), np.linspace(-1.0, 0.5, 12).reshape(2, 2, 3)
check(my_guidance, guided, c, u, 3.0, solution=guidance_solution, mistakes=mistakes.GUIDANCE)"""
RUN = """def my_final_loss():
    raise NotImplementedError("Exercise: a loss below 0.5")

def final_loss_solution():
    return 0.25

check_below(my_final_loss, 0.5, solution=final_loss_solution, what="the final loss")"""


def chapter(*cells: str):
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_markdown_cell("# 01 · Tiny")] + [nbformat.v4.new_code_cell(c) for c in cells]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return notebook


def answered(cell: str, body: str) -> str:
    """The student form of a cell, its `raise` replaced by the student's code."""
    head = cell.split("\n\ndef guidance_solution")[0].split("\n\ndef final_loss_solution")[0]
    return head.split("    raise")[0] + "    " + body


def write(path, notebook_or_text):
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(notebook_or_text, str):
        path.write_text(notebook_or_text)
    else:
        nbformat.write(notebook_or_text, path)


@pytest.fixture
def course(tmp_path):
    chapters = tmp_path / "course"
    write(chapters / "01_tiny.ipynb", chapter(SETUP, GUIDANCE, GUIDANCE_CHECK, RUN))
    return chapters


def test_the_student_copy_of_a_chapter_has_no_solutions_and_runs(course, tmp_path):
    assert main(["course", "student-copy", str(tmp_path / "handout"), "--chapters", str(course)]) == 0
    handout = nbformat.read(tmp_path / "handout" / "01_tiny.ipynb", as_version=4)
    text = "\n".join(c.source for c in handout.cells)
    assert "_solution" not in text and "raise NotImplementedError" in text
    assert "check(my_guidance, guided, c, u, 3.0, mistakes=mistakes.GUIDANCE)" in text
    (tmp_path / "a_file").write_text("")
    assert main(["course", "student-copy", str(tmp_path / "a_file"), "--chapters", str(course)]) == 2


def test_a_made_up_class_is_graded_and_nothing_is_written_outside_the_gradebook_folder(course, tmp_path, capsys):
    handout = tmp_path / "handout"
    main(["course", "student-copy", str(handout), "--chapters", str(course)])
    blank = nbformat.read(handout / "01_tiny.ipynb", as_version=4)
    setup, guidance, guidance_check, run = (c.source for c in blank.cells[1:])
    right_run = answered(run, "return 0.125\n\ncheck_below(my_final_loss, 0.5, what=\"the final loss\")")
    submissions, outside = tmp_path / "submissions", tmp_path / "outside.txt"

    def submit(student, *cells, name="01_tiny.ipynb"):
        write(submissions / student / name, chapter(*cells))

    submit("ada", setup, answered(guidance, "return unconditional + scale * (conditional - unconditional)"),
           guidance_check, right_run)
    for i, mistake in enumerate(mistakes.GUIDANCE):  # one student per common mistake
        body = {0: "return conditional + scale * (unconditional - conditional)", 1: "return scale * conditional",
                2: "return unconditional + scale * conditional"}[i]
        submit(f"mistake{i}", setup, answered(guidance, body), guidance_check, run)
    write(submissions / "empty" / "01_tiny.ipynb", blank)
    submit("raises", "import a_module_that_does_not_exist\n" + setup, guidance, guidance_check, run)
    submit("loops", setup, answered(guidance, "while True:\n        pass"), guidance_check, right_run)
    write(submissions / "garbage" / "01_tiny.ipynb", '{"cells": [ this is not JSON')
    submit("no_check_cell", setup, answered(guidance, "return unconditional"), right_run)
    submit("vandal", setup + f"\nopen({str(outside)!r}, 'w').write('x')", "import subprocess\n"
           f"subprocess.run(['touch', {str(outside)!r}])", guidance, guidance_check, right_run)
    (submissions / "absent").mkdir()

    before = {p for p in tmp_path.rglob("*")}
    start = time.perf_counter()
    out = tmp_path / "gradebook" / "grades.csv"
    assert main(["course", "grade", str(submissions), "--out", str(out.parent), "--chapters", str(course),
                 "--timeout", "10"]) == 0
    print(f"graded a class of {len(list(submissions.iterdir()))} in {time.perf_counter() - start:.1f} s")

    rows = {row["student"]: row for row in csv.DictReader(out.open())}
    g, r = "01 my_guidance", "01 my_final_loss"
    assert rows["ada"][g] == "correct" and rows["ada"][r] == "correct" and rows["ada"]["correct"] == "2"
    for i, mistake in enumerate(mistakes.GUIDANCE):
        assert rows[f"mistake{i}"][g] == f"wrong: a common mistake: {mistake}"
        assert rows[f"mistake{i}"][r] == "not attempted"
    assert rows["empty"][g] == rows["empty"][r] == "not attempted"
    assert rows["raises"][g].startswith("error: its check never ran; the first error: ModuleNotFoundError")
    assert rows["loops"][g].startswith("timed out") and rows["loops"][r].startswith("timed out")
    assert rows["garbage"][g].startswith("error: not a readable notebook")
    assert rows["no_check_cell"][g] == "not attempted: its check never ran"
    assert rows["no_check_cell"][r] == "correct"
    assert rows["vandal"][r] == "correct"  # its forbidden cells raised; the rest of it was graded
    assert rows["absent"][g] == rows["absent"][r] == "not submitted"

    assert not outside.exists()
    written = {p for p in tmp_path.rglob("*")} - before
    assert written and all(p.is_relative_to(out.parent) for p in written), sorted(written)
    executed = nbformat.read(out.parent / "graded" / "vandal" / "01_tiny.ipynb", as_version=4)
    errors = [o.evalue for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert any("may write only inside its own folder" in e for e in errors)
    assert any("may not start or signal programs" in e for e in errors)


def test_grading_refuses_a_folder_without_students(tmp_path, course, capsys):
    (tmp_path / "submissions").mkdir()
    assert main(["course", "grade", str(tmp_path / "submissions"), "--chapters", str(course)]) == 2
    assert "no student folders" in capsys.readouterr().err
    assert main(["course", "grade", str(tmp_path / "nowhere"), "--chapters", str(course)]) == 2
    assert "no submissions folder" in capsys.readouterr().err
