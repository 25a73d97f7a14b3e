"""A guard for the kernel that runs a student's notebook: it writes only inside given folders, and
starts no other program.

Python's audit hooks (PEP 578) see every file the interpreter opens, removes,
renames or creates, and every process it starts or signals. The grader installs
this one first thing in each submission's kernel; from then on a write outside
the allowed folders, or an attempt to start a program or to kill one, raises
PermissionError in the student's cell, and the grading goes on. An audit hook
cannot be removed once installed.

It guards against accidents and casual mischief; it is not a security
boundary. Code that reaches native libraries directly (ctypes, a compiled
extension) is not seen by the hook, and a notebook can always write its own
verdicts file. Grade a class you do not trust inside a container or a
throwaway virtual machine as well.
"""

import os
import sys

# The audit events that change a file, and which of their arguments are paths.
PATH_EVENTS = {
    "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1), "os.symlink": (1,),
    "os.link": (1,), "os.chmod": (0,), "os.chown": (0,), "os.truncate": (0,), "os.utime": (0,),
    "shutil.rmtree": (0,), "os.setxattr": (0,), "os.removexattr": (0,),
}
PROCESS_EVENTS = {"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
                  "os.forkpty", "pty.spawn", "os.kill", "os.killpg", "os.startfile"}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _is_write(mode, flags) -> bool:
    if isinstance(flags, int) and flags & WRITE_FLAGS:
        return True
    return isinstance(mode, str) and any(c in mode for c in "wax+")


def confine_writes(allowed_folders) -> None:
    """From now on, in this interpreter, refuse writes outside `allowed_folders` and new processes."""
    roots = [os.path.realpath(folder) for folder in allowed_folders]

    def inside(path) -> bool:
        if isinstance(path, int):  # a file descriptor already open: its path was checked when it was opened
            return True
        path = os.path.realpath(os.fsdecode(path))
        return path == os.devnull or any(path == root or path.startswith(root + os.sep) for root in roots)

    def hook(event: str, args) -> None:
        if event in PROCESS_EVENTS:
            raise PermissionError(f"a graded notebook may not start or signal programs ({event})")
        if event == "open" and _is_write(args[1], args[2]) and not inside(args[0]):
            raise PermissionError(f"a graded notebook may write only inside its own folder, not to {args[0]}")
        if event in PATH_EVENTS:
            for i in PATH_EVENTS[event]:
                if i < len(args) and args[i] is not None and not inside(args[i]):
                    raise PermissionError(f"a graded notebook may change files only inside its own folder, "
                                          f"not {args[i]} ({event})")

    sys.addaudithook(hook)
