"""The only code that talks to DVC: version the raw data directory and move it to and from the remote.

Commands that change the repository (init, config, add, push, pull) run the ``dvc`` CLI of this
interpreter, so locking, ``.gitignore`` updates and error messages are DVC's own. Hashing the
workspace runs DVC's own build code in process, so a directory hash computed here is the one
``dvc add`` would record.

``<data_dir>.dvc`` carries, under its top-level ``meta:`` (which DVC keeps untouched), the caller's
meta and ``files``: the md5 of every file. A clone without the DVC cache can then still name
which file changed, and ``recorded_version`` refuses a ``files`` list that does not add up to the
recorded directory hash (left stale by a hand-run ``dvc add``, which keeps the old ``meta``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from components.config import VersioningConfig

DIR_SUFFIX = ".dir"
FILES_KEY = "files"


class DvcError(RuntimeError):
    """A ``dvc`` command exited non-zero."""

    def __init__(self, cmd: list[str], returncode: int, stderr: str) -> None:
        self.cmd = cmd
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(f"`{' '.join(cmd)}` failed with exit code {returncode}:\n{stderr.strip()}")


@dataclass(frozen=True)
class DataVersion:
    """One state of a tracked directory, as DVC hashes it."""

    path: str  # the tracked directory, relative to the repository root
    dvc_md5: str  # exactly as in the .dvc file: '<32 hex>.dir'
    files: dict[str, str]  # posix path inside the directory -> md5 of its bytes
    meta: dict[str, Any] = field(default_factory=dict)  # the caller's meta, without ``files``

    @property
    def md5(self) -> str:
        return self.dvc_md5.removesuffix(DIR_SUFFIX)


class DataDrift(Exception):
    """The data on disk is not the data the .dvc file records."""

    def __init__(self, message: str, recorded: DataVersion, workspace: DataVersion | None) -> None:
        super().__init__(message)
        self.recorded = recorded
        self.workspace = workspace  # None when the directory is missing


def _dvc(root: Path, *args: str, cwd: Path | None = None) -> str:
    # Never pass --quiet: it silences the error messages DvcError carries too.
    cmd = [sys.executable, "-m", "dvc", *args]
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "1"}
    proc = subprocess.run(cmd, cwd=cwd or root, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DvcError(["dvc", *args], proc.returncode, proc.stderr or proc.stdout)
    return proc.stdout


def _dvc_file(root: Path, data_dir: str) -> Path:
    return Path(root) / f"{data_dir}.dvc"


def _init_flags(root: Path) -> list[str]:
    """A git repository's own root: DVC with git; a folder inside one: a DVC sub-project, unless git ignores the folder
    (``runs/<profile>/``), which DVC refuses to track through git: then, as outside any repository, without git."""
    if (root / ".git").exists():
        return []
    if any((parent / ".git").exists() for parent in root.resolve().parents) and not _git_ignores(root):
        return ["--subdir"]
    return ["--no-scm"]


def _git_ignores(path: Path) -> bool:
    try:
        ignored = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=path, capture_output=True)
    except FileNotFoundError:  # no git here: nothing to track through
        return True
    return ignored.returncode == 0


def ensure_repo(root: Path, cfg: VersioningConfig) -> None:
    """Initialise DVC in ``root`` if needed, turn analytics off and, when no remote is configured, add ``cfg``'s as
    the default. A remote a team configured itself is left as it is (push and pull then use it: ``_remote``).

    ``core.autostage`` stays off: staging in git is left to the user, whose index may hold other work.
    """
    root = Path(root)
    if not (root / ".dvc").is_dir():
        _dvc(root, "init", *_init_flags(root))
    if str(_settings(root, levels=("repo",)).get("core.analytics")).lower() != "false":
        _dvc(root, "config", "core.analytics", "false")
    if not _remotes(root):
        # The CLI resolves a relative URL against the working directory and stores it relative to
        # .dvc/; run from .dvc/ it stores cfg.remote_url verbatim, which is relative to .dvc/.
        _dvc(root, "remote", "add", "--default", cfg.remote_name, cfg.remote_url, cwd=root / ".dvc")


def _settings(root: Path, levels: tuple[str, ...] | None = None) -> dict[str, str]:
    """DVC's settings for ``root`` as ``dvc config --list`` reads them (every level, a later one winning; relative
    URLs resolved), flattened to ``section.key``; read in this process, not by starting the CLI (~0.4 s each)."""
    from dvc.config import Config
    from dvc.utils.flatten import flatten

    config = Config(dvc_dir=root / ".dvc", validate=False)
    merged: dict[str, str] = {}
    for level in levels or Config.LEVELS:
        merged.update({key: str(value) for key, value in flatten(config.read(level)).items()})
    return merged


def _remotes(root: Path) -> dict[str, tuple[str, bool]]:
    """Each configured remote's name: its URL as DVC resolves it, and whether it is the default."""
    settings = _settings(root)
    default = settings.get("core.remote")
    return {
        key[len("remote.") : -len(".url")]: (url, key == f"remote.{default}.url")
        for key, url in settings.items()
        if key.startswith("remote.") and key.endswith(".url")
    }


def _remote(root: Path, cfg: VersioningConfig) -> list[str]:
    """``--remote NAME`` for ``cfg``'s remote where it is configured; else nothing: the repository's default."""
    return ["--remote", cfg.remote_name] if cfg.remote_name in _remotes(root) else []


def remote_url(root: Path, cfg: VersioningConfig) -> str | None:
    """The URL push and pull use (``_remote``), as DVC resolves it; None where no remote is configured."""
    remotes = _remotes(root)
    if cfg.remote_name in remotes:
        return remotes[cfg.remote_name][0]
    return next((url for url, default in remotes.values() if default), None)


def _dir_md5(files: dict[str, str]) -> str:
    from dvc_data.hashfile.tree import Tree

    tree = Tree.from_list([{"md5": md5, "relpath": relpath} for relpath, md5 in files.items()])
    tree.digest()
    return tree.hash_info.value


def workspace_version(root: Path, data_dir: str) -> DataVersion:
    """Hash ``root/data_dir`` as it is on disk, the way ``dvc add`` would (``.dvcignore`` included)."""
    from dvc.repo import Repo
    from dvc_data.hashfile.build import build

    path = Path(root) / data_dir
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a directory")
    with Repo(os.fspath(root)) as repo:
        _, _, tree = build(
            repo.cache.local, os.fspath(path.resolve()), repo.fs, "md5", dry_run=True, ignore=repo.dvcignore
        )
    files = {"/".join(key): hash_info.value for key, _, hash_info in tree}
    return DataVersion(path=data_dir, dvc_md5=tree.hash_info.value, files=dict(sorted(files.items())))


def recorded_version(root: Path, data_dir: str) -> DataVersion | None:
    """The version ``<data_dir>.dvc`` records, or None if there is no such file."""
    from dvc.utils.serialize import load_yaml

    dvc_file = _dvc_file(root, data_dir)
    if not dvc_file.exists():
        return None
    doc = load_yaml(os.fspath(dvc_file))
    (out,) = doc["outs"]
    meta = dict(doc.get("meta") or {})
    files = meta.pop(FILES_KEY, None)
    if not files or _dir_md5(files) != out["md5"]:
        raise ValueError(
            f"{dvc_file.name}: meta.{FILES_KEY} does not add up to the recorded md5 {out['md5']} "
            "(was `dvc add` run by hand?); re-run track() to record the per-file hashes"
        )
    return DataVersion(path=data_dir, dvc_md5=out["md5"], files=dict(files), meta=meta)


def track(root: Path, data_dir: str, meta: dict[str, Any]) -> DataVersion:
    """``dvc add`` the directory and store ``meta`` plus per-file md5s in its .dvc file.

    ``meta`` replaces whatever meta was stored before. The directory is re-hashed after the add;
    if it no longer matches what DVC recorded (it changed meanwhile), DataDrift is raised.
    """
    from dvc.utils.serialize import dumps_yaml, parse_yaml_for_update

    if FILES_KEY in meta:
        raise ValueError(f"meta key {FILES_KEY!r} is reserved for the per-file md5s")
    _dvc(root, "add", data_dir)
    dvc_file = _dvc_file(root, data_dir)
    doc = parse_yaml_for_update(dvc_file.read_text(), os.fspath(dvc_file))
    (out,) = doc["outs"]
    current = workspace_version(root, data_dir)
    if current.dvc_md5 != out["md5"]:
        recorded = DataVersion(path=data_dir, dvc_md5=out["md5"], files={}, meta={})
        message = f"{data_dir}/ changed while `dvc add` ran: {out['md5']} != {current.dvc_md5}"
        raise DataDrift(message, recorded, current)
    doc["meta"] = {**meta, FILES_KEY: current.files}
    tmp = dvc_file.with_name(dvc_file.name + ".tmp")
    tmp.write_text(dumps_yaml(doc))
    os.replace(tmp, dvc_file)
    return DataVersion(path=data_dir, dvc_md5=current.dvc_md5, files=current.files, meta=dict(meta))


def _describe_drift(data_dir: str, dvc_name: str, recorded: DataVersion, current: DataVersion) -> str:
    lines = [f"data drift in {data_dir}/: directory md5 {recorded.md5} ({dvc_name}) != {current.md5} (on disk)"]
    for name in sorted(recorded.files.keys() | current.files.keys()):
        before, after = recorded.files.get(name), current.files.get(name)
        if before == after:
            continue
        if after is None:
            lines.append(f"  {name} removed: md5 {before} ({dvc_name}), missing on disk")
        elif before is None:
            lines.append(f"  {name} added: md5 {after} (on disk), not in {dvc_name}")
        else:
            lines.append(f"  {name} md5 {before} ({dvc_name}) != {after} (on disk)")
    return "\n".join(lines)


def check_drift(root: Path, data_dir: str) -> DataVersion:
    """Return the recorded version if the workspace matches it, else raise DataDrift."""
    dvc_file = _dvc_file(root, data_dir)
    recorded = recorded_version(root, data_dir)
    if recorded is None:
        raise FileNotFoundError(f"{dvc_file} not found: track {data_dir}/ first")
    if not (Path(root) / data_dir).is_dir():
        raise DataDrift(
            f"data drift in {data_dir}/: directory missing, {dvc_file.name} records md5 {recorded.md5} "
            "(pull it from the remote)",
            recorded,
            None,
        )
    current = workspace_version(root, data_dir)
    if current.dvc_md5 != recorded.dvc_md5:
        raise DataDrift(_describe_drift(data_dir, dvc_file.name, recorded, current), recorded, current)
    return recorded


def push(root: Path, cfg: VersioningConfig) -> None:
    """Upload every tracked output in the cache to ``cfg``'s remote (else the repository's default)."""
    _dvc(root, "push", *_remote(root, cfg))


def pull(root: Path, cfg: VersioningConfig) -> None:
    """Download every tracked output from ``cfg``'s remote (else the repository's default) and check it out into the
    workspace."""
    _dvc(root, "pull", *_remote(root, cfg))


def lock_stages(root: Path, stages: Sequence[str]) -> None:
    """Record ``stages`` of dvc.yaml as done with what is on disk now (``dvc commit``): their deps, params and outs
    go into dvc.lock, so ``dvc status`` finds them up to date."""
    _dvc(Path(root), "commit", "--force", *stages)


def dvc_status(root: Path, cfg: VersioningConfig | None = None) -> dict[str, Any]:
    """``dvc status`` as a dict; ``{}`` means in sync. With ``cfg``, compares the cache with its remote."""
    remote = ["--cloud", *_remote(root, cfg)] if cfg else []
    return json.loads(_dvc(root, "status", "--json", *remote) or "{}")


def directory_md5(path: Path) -> str:
    """The md5 (bare hex) ``dvc add`` would record for a directory anywhere on disk, outside any repository."""
    import hashlib

    path = Path(path)
    files = {
        child.relative_to(path).as_posix(): hashlib.md5(child.read_bytes()).hexdigest()
        for child in sorted(path.rglob("*"))
        if child.is_file()
    }
    return _dir_md5(files).removesuffix(DIR_SUFFIX)
