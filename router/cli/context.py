"""State shared by the commands of one CLI invocation (no globals)."""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass, field
from pathlib import Path

import click

from router.app import RouterApp
from router.cli.output import shortened_uid_suffix
from router.config import Settings
from router.db.queries import study_uids_ending_with
from router.errors import NotFoundError, ValidationError
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

    def study_uid(self, text: str) -> str:
        """A Study Instance UID as typed: whole, or shortened as tables show it (``…`` and its
        last characters) when exactly one study ends that way.

        Raises
        ------
        NotFoundError
            A shortened UID that no study ends with.
        ValidationError
            A shortened UID that several studies end with.
        """
        text = text.strip()  # pasted with the spaces around it
        suffix = shortened_uid_suffix(text)
        if suffix is None:
            return text
        with self.app().sessions() as session:
            matches = study_uids_ending_with(session, suffix)
        if not matches:
            raise NotFoundError(f"no study UID ends with {suffix}")
        if len(matches) > 1:
            raise ValidationError(
                f"several study UIDs end with {suffix}: give more of the UID (tables show it whole with --wide)"
            )
        return matches[0]


def study_uid_argument(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """Click callback: a study UID argument or option, a shortened one resolved (:meth:`CliContext.study_uid`)."""
    if value is None:
        return None
    obj = ctx.find_object(CliContext)
    assert obj is not None
    return obj.study_uid(value)
