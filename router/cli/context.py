"""State shared by the commands of one CLI invocation (no globals)."""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass, field
from pathlib import Path

from router.app import RouterApp
from router.config import Settings
from router.logsafety import configure_logging
from router.services.audit_log import Actor


@dataclass
class CliContext:
    """Settings of this invocation and the lazily opened app."""

    settings: Settings
    config_path: Path | None = None
    verbose: bool = False
    data_dir_option: Path | None = None  # the root --data-dir, when given
    acting_as: str | None = None  # the root --as NAME, recorded beside the OS account
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

    def os_user(self) -> Actor:
        """Who makes a change, for the audit log: the process's real account and the ``--as`` name.

        The account comes from the real user id (``pwd.getpwuid(os.getuid())``), never from
        ``LOGNAME``/``USER``, which anyone can set; an id with no passwd entry is ``uid:N``.
        """
        uid = os.getuid()
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = f"uid:{uid}"
        return Actor(name, self.acting_as)
