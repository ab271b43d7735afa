"""The run directory of a console script must be writable: checked before any work, and a failed write named.

- :class:`RunDirCheck`, a Hydra callback of every console script's config: before Hydra creates
  ``hydra.run.dir`` (``hydra.sweep.dir`` for ``-m``), it creates it and writes a probe file there; where that
  fails (a file in the path, no permission, a read-only or full disk) the script ends with one line naming the
  key, the directory and the reason, and exit status 1.
- :func:`guard_writes` wraps a script's body: an ``OSError`` of writing (file too large, no space, quota, no
  permission, read-only) ends the script with one line naming the run directory and what to do, instead of a
  Python traceback.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
import tempfile
from pathlib import Path

from hydra.experimental.callback import Callback

WRITE_ERRORS = {errno.EFBIG, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR,
                errno.EEXIST, errno.EISDIR}


def check_writable(key: str, path) -> None:
    """Create ``path`` (with parents) and write a probe file in it; exit with one line naming ``key`` if not."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".metajax-write-check-"):
            pass
    except OSError as error:
        print(f"error: `{key}`: the run directory {str(path)!r} cannot be written ({error.strerror or error}); "
              f"choose a directory you can write, e.g. `{key}=outputs/run`.", file=sys.stderr)
        sys.exit(1)


class RunDirCheck(Callback):
    """Hydra callback: :func:`check_writable` on the run (or sweep) directory before the job starts."""

    def on_run_start(self, config, **kwargs) -> None:
        check_writable("hydra.run.dir", config.hydra.run.dir)

    def on_multirun_start(self, config, **kwargs) -> None:
        check_writable("hydra.sweep.dir", config.hydra.sweep.dir)


def register_checks() -> None:
    """Store the ``checks`` config group (package ``_global_``) whose ``default`` adds :class:`RunDirCheck` to
    ``hydra.callbacks``; a console script's root config lists ``{"checks": "default"}`` in its defaults."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="checks", name="default", package="_global_",
                                 node={"hydra": {"callbacks": {"run_dir": {"_target_": f"{__name__}.RunDirCheck"}}}})


def guard_writes(main):
    """``main(cfg)`` with a failed write (``OSError`` in :data:`WRITE_ERRORS`) reported in one line, exit 1."""

    @functools.wraps(main)
    def wrapped(cfg):
        try:
            return main(cfg)
        except OSError as error:
            if error.errno not in WRITE_ERRORS:
                raise
            where = os.getcwd()
            try:
                from hydra.core.hydra_config import HydraConfig

                where = HydraConfig.get().runtime.output_dir
            except ValueError:
                pass
            target = f" ({error.filename})" if error.filename else ""
            print(f"error: writing to the run directory {where!r} failed{target}: {error.strerror or error}. Free "
                  "disk space, raise the file-size limit (`ulimit -f`) or the quota, or choose another "
                  "`hydra.run.dir`; rerunning the same command resumes from the last checkpoint.", file=sys.stderr)
            sys.exit(1)

    return wrapped
