"""What the server script is told after `--` (`streamlit run app/web/streamlit_app.py -- ...`):
the run, who may use the app, and where the audit trail goes.

`symile-clinical app` writes these arguments (`ServeOptions.to_args`) and the server reads
them back (`ServeOptions.from_args`), so both ways of starting the server take the same
options: `--run RUN`, `--unauthenticated`, `--allow-user EMAIL_OR_DOMAIN` (repeatable) and
`--audit-dir DIR`.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from app.web.run_context import run_dir_from_args


@dataclass(frozen=True)
class ServeOptions:
    """The served run and its access settings.

    unauthenticated: the deployment is knowingly served without sign-in beyond loopback.
    allow_users: e-mail addresses or domains ('@hospital.org' or 'hospital.org') allowed
    to sign in; empty = anyone the identity provider signs in.
    audit_dir: the audit trail's folder; None = RUN/audit.
    """

    run_dir: Path | None = None
    unauthenticated: bool = False
    allow_users: tuple[str, ...] = ()
    audit_dir: Path | None = None

    @classmethod
    def from_args(cls, argv: Sequence[str], environ: Mapping[str, str]) -> ServeOptions:
        """Read the script's arguments (unknown ones are ignored); the run may also come from
        the SYMILE_CLINICAL_RUN environment variable (run_context.run_dir_from_args)."""
        parser = argparse.ArgumentParser(add_help=False)
        parser.add_argument("--unauthenticated", action="store_true")
        parser.add_argument("--allow-user", dest="allow_users", action="append", default=[])
        parser.add_argument("--audit-dir", type=Path)
        known, _ = parser.parse_known_args(list(argv))
        return cls(
            run_dir=run_dir_from_args(argv, environ),
            unauthenticated=known.unauthenticated,
            allow_users=tuple(known.allow_users),
            audit_dir=known.audit_dir,
        )

    def to_args(self) -> list[str]:
        """The script arguments that from_args reads back (paths made absolute)."""
        args = [] if self.run_dir is None else ["--run", str(Path(self.run_dir).resolve())]
        if self.unauthenticated:
            args.append("--unauthenticated")
        for user in self.allow_users:
            args.append(f"--allow-user={user}")
        if self.audit_dir is not None:
            args.append(f"--audit-dir={Path(self.audit_dir).resolve()}")
        return args

    @property
    def audit_folder(self) -> Path | None:
        """Where the audit trail is written: audit_dir, else RUN/audit (None without a run)."""
        if self.audit_dir is not None:
            return Path(self.audit_dir)
        return None if self.run_dir is None else Path(self.run_dir) / "audit"
