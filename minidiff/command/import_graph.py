"""The library's own layout, checked: which module imports which, and the rules the house keeps.

    python -m minidiff.command.import_graph     # every module with what it imports; broken rules; exit 1 if any

The rooms of the house, in order. Each imports only from its own room and the
rooms before it, so the course's order is the import order:

    stages       corruption < denoiser < captions < sampling, the four stages; a stage imports only
                 earlier stages, and `attention` (shared by the denoiser and the caption encoder)
    machinery    what makes a run fast and safe (imports nothing of minidiff but itself)
    optimization AdamW and its learning rate; mixed precision
    loop         the one training loop, which everything that trains goes through
    later        the stages the field added later, each a file at the top of `minidiff/` beside the
                 four (or a folder of one room): super-resolution (a cascade's upscaler), latent
                 diffusion's autoencoder, the text encoders, a DiT denoiser, straight-line flows
    model        the stages put together
    datasets     the data every stage is fed
    loss         the loss a text-to-image model trains on
    training     its batches, its run and its checkpoint
    latents      the autoencoder trained, and a dataset's latents cached
    generator    a trained model, used
    recipe       every named setup as a file, and a run made of one
    evaluation   metrics, judges and pictures
    course       what the chapters use beside the library
    command      the `minidiff` command and its benchmarks

It reads the source with `ast` and runs nothing. No import cycles, and no file
over MAX_LINES lines, one idea per file.
"""

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]
STAGES = ("corruption", "denoiser", "captions", "sampling")
SHARED_BY_STAGES = ("attention",)
LATER_STAGES = ("superres", "autoencoder", "text_encoders", "dit", "flows")
ROOMS = ("stages", "machinery", "optimization", "loop", "later", "model", "datasets", "loss", "training", "latents",
         "generator", "recipe", "evaluation", "course", "command")
# Modules whose room has another name.
ROOM_OF = {"precision": "optimization", "from_recipe": "recipe"}
MAX_LINES = 400


def modules() -> dict[str, Path]:
    """Every module of the library, by dotted name below `minidiff` ("sampling", "machinery.sharding")."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def room(module: str) -> str:
    """The room a module is in: "package" for the package's own `__init__` (the front door, which may
    reach any room: it looks `minidiff.load` up when first used), None for a module in no room."""
    top = module.split(".")[0]
    if module == "":
        return "package"
    if top in STAGES + SHARED_BY_STAGES:
        return "stages"
    if top in LATER_STAGES:
        return "later"
    return ROOM_OF.get(top, top if top in ROOMS else None)


def imports_of(path: Path, known) -> set[str]:
    """The library modules `path` imports (by dotted name below `minidiff`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            if name.startswith("minidiff."):
                inner = name.removeprefix("minidiff.")
                if inner in known:
                    found.add(inner)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {module: imports_of(path, known) - {module} for module, path in known.items()}


def broken_rules(edges: dict[str, set[str]] | None = None) -> list[str]:
    """Every way the library (or the import graph `edges`) breaks the house rules, one sentence
    each; none, an empty list."""
    edges = graph() if edges is None else edges
    problems = [f"{module} is in no room: give it one (ROOMS here, and the README's table)"
                for module in sorted(edges) if room(module) is None]
    for module, imported in sorted(edges.items()):
        place = room(module)
        for other in sorted(imported):
            there = room(other)
            if place in ("package", None) or there is None:
                continue
            if other == "":
                problems.append(f"{module} imports the package minidiff itself, which imports the rooms after it")
                continue
            if place == "stages" and there == "stages":
                allowed = SHARED_BY_STAGES + (STAGES[: STAGES.index(module)] if module in STAGES else ())
                if other not in allowed:
                    problems.append(f"stage {module} imports {other}, which is not an earlier stage")
            elif ROOMS.index(there) > ROOMS.index(place):
                problems.append(f"{module} ({place}) imports {other} ({there}), a room after its own")
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(edges)]
    return problems + long_files()


def long_files() -> list[str]:
    """The modules over MAX_LINES lines, one sentence each."""
    problems = []
    for path in modules().values():
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            problems.append(f"{path.relative_to(PACKAGE.parent)} has {lines} lines, over {MAX_LINES}")
    return problems


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles, each once (depth-first search)."""
    found, state = [], {}

    def visit(module, trail):
        state[module] = "open"
        for other in sorted(edges.get(module, ())):
            if state.get(other) == "open":
                found.append(trail[trail.index(other):] + [other])
            elif other not in state:
                visit(other, trail + [other])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    return found


def main() -> int:
    order = ROOMS + ("package", None)
    for module, imported in sorted(graph().items(), key=lambda item: order.index(room(item[0]))):
        print(f"{room(module) or '(none)':10s} {module or 'minidiff':28s} <- {', '.join(sorted(imported)) or '-'}")
    problems = broken_rules()
    print("\n" + ("\n".join(problems) if problems else "every rule holds: rooms import only earlier rooms, stages only "
                  f"earlier stages; no cycles; no file over {MAX_LINES} lines"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
