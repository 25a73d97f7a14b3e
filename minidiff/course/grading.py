"""The course in a classroom: a student copy of the chapters, and a grader for the notebooks a class hands in.

    minidiff course student-copy handout/                 # the chapters, every reference solution removed
    minidiff course grade submissions/ --out grades.csv   # one row per student, one column per exercise

The student copy. An exercise's reference solution is a function named
`..._solution`, passed to its check as `solution=...` (`exercises.py`). The
copy deletes both from each code cell, found by parsing the cell (not by
matching text), and clears the outputs; what is left is the student form,
`my_...` raising NotImplementedError, and its check.

The grader. Submissions are one folder per student, holding that student's
chapter notebooks under the chapters' own names (`ada/01_destroying_images.ipynb`;
a name that starts with the chapter's number will do). Each notebook runs top
to bottom in a fresh kernel in its own process, in smoke mode, with a time
limit; a cell that raises does not stop the cells after it. The checks write
each exercise's verdict to a file the grader names; an exercise whose check
never ran is "not attempted", or "error" when a cell raised, or "timed out".
A notebook that is not JSON, that loops forever or that raises at import
costs its own exercises only: the class's grading goes on.

Everything the grader writes stays in the folder of the CSV: the CSV itself,
and `graded/<student>/`, where each student's notebooks run (their files, the
executed notebooks with their outputs, the verdicts). The kernel that runs a
submission is confined to that student's folder (`sandbox.py`; read its
limits before grading a class you do not trust).
"""

import ast
import copy
import csv
import importlib.util
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat

from minidiff.machinery.atomic import atomic_write

CHECKS = ("check", "check_below")  # the functions of exercises.py that grade an exercise
DEFAULT_TIMEOUT = 600  # seconds a submitted notebook may run
# A kernel's start, and the notebook's reading and writing, on top of its cells' time.
START_ALLOWANCE = 60


def default_chapters_dir() -> Path:
    """The chapters of this checkout of minidiff (they live beside the package, not inside it)."""
    folder = Path(__file__).resolve().parents[2] / "chapters"
    if not folder.is_dir():
        raise FileNotFoundError(f"no chapters folder at {folder}; pass the folder of the course's notebooks "
                                "with --chapters")
    return folder


def chapter_notebooks(chapters_dir) -> list[Path]:
    paths = sorted(Path(chapters_dir).glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        raise FileNotFoundError(f"no chapter notebooks (NN_name.ipynb) in {chapters_dir}")
    return paths


# --- Reading a cell's code -----------------------------------------------------------


def _parsed(source: str) -> ast.Module:
    """A code cell's syntax tree; IPython's magic lines (%matplotlib, !pip) are read as comments,
    byte for byte the same length, so that positions in the tree are positions in the cell."""
    lines = [("#" + line[1:]) if line.lstrip().startswith(("%", "!")) else line for line in source.split("\n")]
    return ast.parse("\n".join(lines))


def _grading_calls(tree: ast.AST):
    """The calls of check and check_below in a syntax tree."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in CHECKS:
            yield node


def exercises_of(notebook) -> list[str]:
    """The exercises a chapter grades: the names of the answers its checks are called on, in order."""
    names = []
    for cell in notebook.cells:
        if cell.cell_type == "code" and any(name in cell.source for name in CHECKS):
            for call in _grading_calls(_parsed(cell.source)):
                if call.args and isinstance(call.args[0], ast.Name) and call.args[0].id not in names:
                    names.append(call.args[0].id)
    return names


# --- The student copy -----------------------------------------------------------


def _offset(line_starts: list[int], line: int, column: int) -> int:
    """A position in the tree (1-based line, column in UTF-8 bytes) as an offset into the cell's bytes."""
    return line_starts[line - 1] + column


def without_solutions(source: str) -> str:
    """A code cell with its reference solutions removed: every function named ..._solution, and every
    `solution=` passed to a check."""
    if "solution" not in source:
        return source
    tree, data = _parsed(source), source.encode()
    line_starts = [0]
    for line in data.split(b"\n")[:-1]:
        line_starts.append(line_starts[-1] + len(line) + 1)
    cuts, removed = [], set()  # (start, end) byte ranges to delete; the solutions' names
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.endswith("_solution"):
            removed.add(node.name)
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            start, end = line_starts[first - 1], _offset(line_starts, node.end_lineno, node.end_col_offset)
            while data[end:end + 1] == b"\n" and data[end + 1:end + 2] in (b"\n", b""):
                end += 1  # and the blank lines after it
            cuts.append((start, min(end + 1, len(data))))
    for call in _grading_calls(tree):
        parts = sorted(call.args + call.keywords, key=lambda n: (n.lineno, n.col_offset))
        for i, part in enumerate(parts):
            if isinstance(part, ast.keyword) and part.arg == "solution" and i > 0:
                previous = parts[i - 1]
                cuts.append((_offset(line_starts, previous.end_lineno, previous.end_col_offset),
                             _offset(line_starts, part.end_lineno, part.end_col_offset)))
    for start, end in sorted(cuts, reverse=True):
        data = data[:start] + data[end:]
    result = data.decode().rstrip("\n")
    left = [n.id for n in ast.walk(_parsed(result)) if isinstance(n, ast.Name) and n.id in removed]
    if left:
        raise ValueError(f"a reference solution is still used after removing it: {', '.join(sorted(set(left)))} "
                         f"in the cell starting {source[:60]!r}")
    return result


def student_notebook(notebook):
    """The student form of a chapter: no reference solutions, no outputs."""
    notebook = copy.deepcopy(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.source = without_solutions(cell.source)
            cell.outputs, cell.execution_count = [], None
    return notebook


def write_student_copy(out_dir, chapters_dir=None) -> list[Path]:
    """Write the student form of every chapter into `out_dir`; the paths written."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} is a file: give the folder to write the chapters to")
    written = []
    for path in chapter_notebooks(chapters_dir or default_chapters_dir()):
        notebook = student_notebook(nbformat.read(path, as_version=4))
        text = nbformat.writes(notebook) + "\n"
        written.append(atomic_write(out_dir / path.name, lambda f, text=text: f.write(text.encode())))
    return written


# --- Running one submission -----------------------------------------------------------


def _guard_cell(allowed: list[str]) -> str:
    return ("from minidiff.course.sandbox import confine_writes\n"
            f"confine_writes({allowed!r})  # the grader's: this notebook writes only inside its folder")


def execute_submission(notebook_path, work_dir, cell_timeout: float) -> None:
    """Run one submitted notebook in a fresh kernel, its cells' errors allowed; write the executed
    notebook, and a summary (the cells that raised, whether one ran out of time), into `work_dir`.
    Runs in a process of its own, which the grader kills with its kernel if it outlives its time."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError

    work_dir = Path(work_dir)
    notebook = nbformat.read(notebook_path, as_version=4)
    allowed = [str(work_dir), os.environ["JAX_COMPILATION_CACHE_DIR"]]
    notebook.cells.insert(0, nbformat.v4.new_code_cell(_guard_cell(allowed)))
    client = NotebookClient(notebook, timeout=cell_timeout, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(work_dir)}})
    summary = {"errors": [], "timed_out": False}
    try:
        client.execute()
    except CellTimeoutError:
        summary["timed_out"] = True
    except Exception as error:  # the kernel died, or could not start
        summary["errors"].append({"cell": None, "error": f"{type(error).__name__}: {error}"})
    summary["errors"] = [{"cell": i, "error": f"{o.ename}: {o.evalue}"} for i, cell in enumerate(notebook.cells)
                         if cell.cell_type == "code" for o in cell.get("outputs", []) if o.output_type == "error"
                         ] + summary["errors"]
    (work_dir / "summary.json").write_text(json.dumps(summary))
    nbformat.write(notebook, work_dir / Path(notebook_path).name)


def _kernel_environment(work_dir: Path, cache_dir: Path, verdicts: Path) -> dict:
    """The environment of a submission's process and its kernel: smoke mode, and every place a library
    would write (home, caches, temporary files, Jupyter's runtime files) inside the student's folder."""
    env = {k: v for k, v in os.environ.items() if k != "MINIDIFF_CHECKPOINT"}
    tmp = work_dir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env.update(MINIDIFF_SMOKE="1", MINIDIFF_VERDICTS=str(verdicts), JAX_COMPILATION_CACHE_DIR=str(cache_dir),
               HOME=str(work_dir), TMPDIR=str(tmp), XDG_CACHE_HOME=str(work_dir / ".cache"),
               MPLCONFIGDIR=str(work_dir / ".matplotlib"), IPYTHONDIR=str(work_dir / ".ipython"),
               JUPYTER_RUNTIME_DIR=str(work_dir / ".jupyter"), JUPYTER_DATA_DIR=str(work_dir / ".jupyter"),
               PYTHONDONTWRITEBYTECODE="1")
    return env


def _run_in_own_process(notebook_path: Path, work_dir: Path, cache_dir: Path, verdicts: Path, timeout: float):
    """(timed_out, stderr's last lines) of running the notebook in a new process, killed with its kernel
    when the time is up."""
    command = [sys.executable, "-m", "minidiff.course.grading", str(notebook_path), str(work_dir), str(timeout)]
    process = subprocess.Popen(command, env=_kernel_environment(work_dir, cache_dir, verdicts), cwd=work_dir,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=timeout + START_ALLOWANCE)
        return False, stderr.decode(errors="replace").strip().splitlines()[-1:]
    except subprocess.TimeoutExpired:
        _kill_session(process)
        return True, []


def _kill_session(process: subprocess.Popen) -> None:
    """Stop the process and everything it started (its kernel runs in the same session)."""
    for pid in _session_members(process.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()


def _session_members(session_id: int) -> list[int]:
    """The processes of a session (Linux and macOS list it with ps)."""
    listing = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout
    members = [int(pid) for pid, sid in (line.split() for line in listing.splitlines()) if int(sid) == session_id]
    return members or [session_id]


def _combined(records: list[dict]) -> tuple[str, str]:
    """One exercise's verdict from its checks' records (an exercise may call its check several times)."""
    for verdict in ("error", "wrong", "not attempted"):
        for record in records:
            if record["verdict"] == verdict:
                return verdict, record.get("reason", "")
    return "correct", ""


def grade_notebook(notebook_path, exercises: list[str], work_dir, cache_dir,
                   timeout: float = DEFAULT_TIMEOUT) -> dict[str, tuple[str, str]]:
    """Each exercise's (verdict, reason) for one submitted notebook."""
    notebook_path, work_dir = Path(notebook_path), Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        nbformat.validate(nbformat.read(notebook_path, as_version=4))
    except Exception as error:  # not JSON, not a notebook, unreadable: this notebook's exercises only
        reason = f"not a readable notebook ({type(error).__name__}: {str(error).splitlines()[0][:120]})"
        return {name: ("error", reason) for name in exercises}
    verdicts = work_dir / f"{notebook_path.stem}.verdicts.jsonl"
    verdicts.unlink(missing_ok=True)
    summary_file = work_dir / "summary.json"
    summary_file.unlink(missing_ok=True)
    timed_out, last_words = _run_in_own_process(notebook_path.resolve(), work_dir, Path(cache_dir), verdicts, timeout)
    records = {}
    if verdicts.is_file():
        for line in verdicts.read_text().splitlines():
            try:
                record = json.loads(line)
                records.setdefault(str(record["exercise"]), []).append(record)
            except (ValueError, KeyError, TypeError):
                continue  # a line the checks did not write
    if summary_file.is_file():
        summary = json.loads(summary_file.read_text())
        errors, timed_out = summary["errors"], timed_out or summary["timed_out"]
    else:  # the run itself failed, or was killed
        errors = [{"cell": None, "error": " ".join(last_words) or "the notebook could not be run"}]
    result = {}
    for name in exercises:
        if name in records:
            result[name] = _combined(records[name])
        elif timed_out:
            result[name] = ("timed out", f"the notebook ran past its {timeout:g} s")
        elif errors:
            result[name] = ("error", f"its check never ran; the first error: {errors[0]['error'][:200]}")
        else:
            result[name] = ("not attempted", "its check never ran")
    return result


# --- A class -----------------------------------------------------------


def _chapter_of(path: Path, chapters: dict[str, Path]) -> str | None:
    """The chapter a submitted notebook is: its name, or a name starting with the chapter's number."""
    if path.name in chapters:
        return path.name
    match = re.match(r"(\d\d)", path.name)
    return next((name for name in chapters if match and name[:2] == match.group(1)), None)


def grade_class(submissions_dir, out_csv, chapters_dir=None, timeout: float = DEFAULT_TIMEOUT,
                report=print) -> list[dict]:
    """Grade every student's notebooks; write one CSV row per student; return the rows."""
    submissions_dir, out_csv = Path(submissions_dir), Path(out_csv)
    missing = [name for name in ("nbclient", "ipykernel") if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"grading runs notebooks, which needs {' and '.join(missing)}: "
                         'pip install "minidiff[course]"')
    if not submissions_dir.is_dir():
        raise FileNotFoundError(f"no submissions folder {submissions_dir}: it should hold one folder per student")
    students = sorted(p for p in submissions_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not students:
        raise FileNotFoundError(f"no student folders in {submissions_dir}")
    chapters = {p.name: p for p in chapter_notebooks(chapters_dir or default_chapters_dir())}
    handed_in = {s.name: {} for s in students}
    for student in students:
        for path in sorted(student.glob("*.ipynb")):
            chapter = _chapter_of(path, chapters)
            if chapter is None:
                report(f"{student.name}/{path.name}: not a chapter of the course, skipped")
            elif chapter in handed_in[student.name]:
                report(f"{student.name}/{path.name}: a second notebook for {chapter}, skipped "
                       f"(graded: {handed_in[student.name][chapter].name})")
            else:
                handed_in[student.name][chapter] = path
    graded_chapters = sorted({c for notebooks in handed_in.values() for c in notebooks})
    exercises = {c: exercises_of(nbformat.read(chapters[c], as_version=4)) for c in graded_chapters}
    columns = [f"{c[:2]} {name}" for c in graded_chapters for name in exercises[c]]
    work_root, cache_dir = out_csv.parent / "graded", out_csv.parent / "graded" / ".jax_cache"
    rows = []
    for student in students:
        row = {"student": student.name}
        for chapter in graded_chapters:
            path = handed_in[student.name].get(chapter)
            start = time.perf_counter()
            if path is None:
                verdicts = {name: ("not submitted", "") for name in exercises[chapter]}
            else:
                verdicts = grade_notebook(path, exercises[chapter], work_root / student.name, cache_dir, timeout)
                report(f"{student.name}/{path.name}: {sum(v == 'correct' for v, _ in verdicts.values())} of "
                       f"{len(verdicts)} correct ({time.perf_counter() - start:.0f} s)")
            for name, (verdict, reason) in verdicts.items():
                row[f"{chapter[:2]} {name}"] = f"{verdict}: {reason}" if reason else verdict
        row["correct"] = sum(row[c] == "correct" for c in columns)
        rows.append(row)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["student", "correct", *columns])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out_csv, lambda f: f.write(text.getvalue().encode()))
    return rows


if __name__ == "__main__":  # the process that runs one submission: NOTEBOOK WORK_DIR CELL_TIMEOUT
    execute_submission(sys.argv[1], sys.argv[2], float(sys.argv[3]))
