"""State shared by the commands of one CLI invocation (no globals)."""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass, field
from pathlib import Path

from router.app import RouterApp
from router.config import Settings
from router.logsafety import configure_logging


@dataclass
class CliContext:
    """Settings of this invocation and the lazily opened app."""

    settings: Settings
    config_path: Path | None = None
    verbose: bool = False
    data_dir_option: Path | None = None  # the root --data-dir, when given
    _app: RouterApp | None = field(default=None, repr=False)

    def app(self, *, upgrade: bool = False) -> RouterApp:
        """Open the router app (database, archive, services) once per invocation."""
        if self._app is None:
            configure_logging(
                self.settings.logging.level, verbose=self.verbose, log_format=self.settings.logging.format
            )
            self._app = RouterApp.open(self.settings, upgrade=upgrade)
        return self._app

    def close(self) -> None:
        """Release the database connections."""
        if self._app is not None:
            self._app.close()
            self._app = None

    @staticmethod
    def os_user() -> str:
        """The operating-system user making a change (for the audit log)."""
        try:
            return getpass.getuser()
        except (KeyError, OSError):
            return os.environ.get("USER", f"uid:{os.getuid()}")
