"""The console scripts in process: a Hydra entry point called as its installed script is, for the tests whose
subject is how a script checks its input and reports (a fresh interpreter adds nothing there but seconds).
The end-to-end tests run the real scripts as subprocesses."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys

from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra

# the config nodes metajax-train/-evaluate/-baselines/-adapt register; a fresh metajax-reconstruct has none of them
# (its own `model` key would otherwise be read as the `model` config group)
_RUN_NODES = ("run.yaml", "adapt.yaml", "data", "tasks", "model", "solver", "trainer", "eval", "preset", "cluster")


def console(entry: str, *overrides: str) -> subprocess.CompletedProcess:
    """Run ``metajax-ENTRY overrides…`` in this process; the exit status, stdout and stderr as a subprocess
    would report them (an uncaught exception is status 1 with its traceback on stderr, as Python prints it)."""
    import traceback
    from importlib.metadata import entry_points

    main = entry_points(group="console_scripts")[f"metajax-{entry}"].load()  # the installed script's function
    GlobalHydra.instance().clear()
    repo = ConfigStore.instance().repo
    saved = dict(repo)
    if entry == "reconstruct":
        for name in _RUN_NODES:
            repo.pop(name, None)
    # Hydra's logging set-up would replace the handlers of this process (pytest's among them): leave it alone
    argv, sys.argv = sys.argv, [f"metajax-{entry}", *overrides, "hydra/job_logging=none", "hydra/hydra_logging=none"]
    out, err, code = io.StringIO(), io.StringIO(), 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
            except Exception:  # noqa: BLE001 — reported as the interpreter would
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = argv
        repo.clear()
        repo.update(saved)
        GlobalHydra.instance().clear()
    return subprocess.CompletedProcess([f"metajax-{entry}", *overrides], code, out.getvalue(), err.getvalue())
