"""Who is asking, and which files they may touch.

The studio runs in one of three modes over one code path:

- `local`: one person, no sign-in; their runs live in the runs folder itself.
- `classroom`: `python app.py --classroom USERS.yaml`; Gradio's own login page; students see and
  touch only their own runs, teachers see every run, stop any, and set the limits.
- `space`: on Hugging Face Spaces (`SPACE_ID` set); "Sign in with Hugging Face" through Gradio's
  OAuth; visitors who are not signed in may look at the published example run and chat with it.

Every handler builds a `User` from the request (`Policy.user`) and reaches files only through
it. A run is named by a *run ref* the server handed out (`run-id` for one's own runs,
`owner/run-id` for a teacher looking at a student's), an upload by an *upload ref*
(`upload:NAME`); both are resolved inside the owner's folder with a real-path containment check.
No handler builds a path from text typed on the page.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from core.data import HUB_PREFIX
from core.events import write_atomic

from .i18n import t

MODES = ("local", "classroom", "space")
USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
UPLOAD_PREFIX = "upload:"
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?(:[\w.-]+)?")
LIMITS_FILE = "studio-limits.json"
EXAMPLE_FILE = "example-run.json"
MB = 2 ** 20


class AccessError(ValueError):
    """A request for something the user may not touch or that does not exist; one line."""


@dataclass
class Limits:
    """What a teacher or Space owner allows; saved in the runs folder, so it survives restarts."""
    max_steps: int = 0              # most steps a run may train (0: no limit)
    allowed_models: list[str] = field(default_factory=list)  # empty: any Hub model or default
    concurrent_runs: int = 1        # training workers at once, for everyone together
    upload_mb: int = 50             # largest upload
    disk_quota_mb: int = 1000       # a user's runs and uploads together (0: no quota)
    keep_checkpoints: int = 2       # checkpoints kept per run (the final adapter always stays)

    @classmethod
    def from_dict(cls, data: dict | None) -> "Limits":
        out = cls()
        for key, value in (data or {}).items():
            if not hasattr(out, key):
                raise AccessError(t("access.limits.unknown", name=key,
                                    known=", ".join(asdict(out))))
            if key == "allowed_models":
                if isinstance(value, str):
                    value = [v.strip() for v in value.split(",") if v.strip()]
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise AccessError(t("access.limits.allowed_models"))
                setattr(out, key, [v[:200] for v in value][:100])
                continue
            try:
                number = int(value)
            except (TypeError, ValueError):
                raise AccessError(t("access.limits.not_whole", name=key,
                                    value=repr(value)[:100])) from None
            low = 1 if key == "concurrent_runs" else 0
            if not low <= number <= 1_000_000:
                raise AccessError(t("access.limits.range", name=key, low=low, high=1_000_000))
            setattr(out, key, number)
        return out


@dataclass
class Account:
    role: str                       # student | teacher
    password: str | None = None     # plain text, or
    password_hash: str | None = None  # pbkdf2_sha256$ITERATIONS$SALT_HEX$HASH_HEX


def hash_password(password: str, iterations: int = 200_000) -> str:
    """A hash for USERS.yaml (`python app.py --hash-password`)."""
    salt = os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"pbkdf2_sha256${iterations}${salt.hex()}${digest.hex()}"


def _password_ok(account: Account, password: str) -> bool:
    if account.password_hash:
        try:
            scheme, iterations, salt, digest = account.password_hash.split("$")
            if scheme != "pbkdf2_sha256":
                return False
            got = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt),
                                      int(iterations))
            return hmac.compare_digest(got.hex(), digest)
        except ValueError:
            return False
    return account.password is not None and hmac.compare_digest(
        account.password.encode(), password.encode())


def load_accounts(path: str | Path) -> tuple[dict[str, Account], dict]:
    """USERS.yaml: `name: {password: ..., role: student|teacher}` for each user, optionally
    under `users:` beside `limits:`. Returns (accounts, limits as written)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise AccessError(t("access.users.unreadable", path=path, reason=exc.strerror)) from None
    if len(text) > 1_000_000:
        raise AccessError(t("access.users.too_big"))
    try:
        if any(isinstance(e, yaml.AliasEvent) or getattr(e, "anchor", None)
               for e in yaml.parse(text)):
            raise AccessError(t("access.users.anchors"))
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        raise AccessError(t("access.users.not_yaml", path=path)) from None
    if not isinstance(data, dict):
        raise AccessError(t("access.users.not_mapping"))
    users, limits = (data.get("users"), data.get("limits") or {}) if "users" in data \
        else (data, {})
    if not isinstance(users, dict) or not users:
        raise AccessError(t("access.users.none"))
    accounts = {}
    for name, entry in users.items():
        name = str(name)
        if not USER_NAME.fullmatch(name):
            raise AccessError(t("access.users.bad_name", name=name[:40]))
        if not isinstance(entry, dict):
            raise AccessError(t("access.users.bad_entry", name=name))
        role = str(entry.get("role", "student"))
        if role not in ("student", "teacher"):
            raise AccessError(t("access.users.bad_role", name=name, role=role[:40]))
        if not entry.get("password") and not entry.get("password_hash"):
            raise AccessError(t("access.users.no_password", name=name))
        accounts[name] = Account(role, str(entry["password"]) if entry.get("password") else None,
                                 entry.get("password_hash"))
    if not any(a.role == "teacher" for a in accounts.values()):
        raise AccessError(t("access.users.no_teacher"))
    if not isinstance(limits, dict):
        raise AccessError(t("access.users.bad_limits"))
    return accounts, limits


class Policy:
    """The server's mode, its runs folder, its accounts and limits: one per server."""

    def __init__(self, mode: str, root: str | Path, accounts: dict[str, Account] | None = None,
                 limits: dict | None = None, local_models: list[str] | None = None,
                 persistent: bool = True, admins: tuple[str, ...] = ()):
        if mode not in MODES:
            raise ValueError(mode)
        self.mode = mode
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.accounts = accounts or {}
        self.local_models = [str(Path(p).resolve()) for p in local_models or []]
        self.persistent = persistent
        self.admins = set(admins)
        saved = self._read_json(LIMITS_FILE)
        self.limits = Limits.from_dict(saved if saved is not None else limits or {})

    @property
    def shared(self) -> bool:
        return self.mode != "local"

    # ---- who is asking --------------------------------------------------------------------
    def check_login(self, username: str, password: str) -> bool:
        """Gradio's `auth=` callable in classroom mode."""
        account = self.accounts.get(str(username))
        return account is not None and _password_ok(account, str(password))

    def user(self, request=None, profile=None) -> "User":
        """The user behind a Gradio request (its `username` from the login page, or the Hugging
        Face profile from OAuth)."""
        if self.mode == "local":
            return User("local", "owner", self)
        if self.mode == "classroom":
            name = getattr(request, "username", None)
            account = self.accounts.get(str(name)) if name else None
            if account is None:
                raise AccessError(t("access.sign_in"))
            return User(str(name), account.role, self)
        name = getattr(profile, "username", None) if profile is not None else None
        if not name or not USER_NAME.fullmatch(str(name)):
            return User("visitor", "visitor", self)
        return User(str(name), "teacher" if name in self.admins else "member", self)

    def user_named(self, name: str) -> "User":
        if self.mode == "local":
            return User("local", "owner", self)
        if not USER_NAME.fullmatch(name):
            raise AccessError(t("access.no_user"))
        account = self.accounts.get(name)
        return User(name, account.role if account else "member", self)

    # ---- settings kept in the runs folder ---------------------------------------------------
    def save_limits(self, limits: Limits) -> None:
        self.limits = limits
        self._write_json(LIMITS_FILE, asdict(limits))

    def example_run(self) -> Path | None:
        """The run a Space owner or teacher published for visitors, if it still exists."""
        data = self._read_json(EXAMPLE_FILE)
        if not isinstance(data, dict):
            return None
        try:
            return self.user_named(str(data.get("owner"))).run_dir(str(data.get("run")))
        except AccessError:
            return None

    def publish_example(self, owner: "User", run_dir: Path) -> None:
        self._write_json(EXAMPLE_FILE, {"owner": owner.name, "run": run_dir.name})

    def _read_json(self, name: str):
        try:
            return json.loads((self.root / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def _write_json(self, name: str, data) -> None:
        write_atomic(self.root / name, json.dumps(data, indent=1))

    def user_homes(self) -> list[Path]:
        if self.mode == "local":
            return [self.root]
        users = self.root / "users"
        return sorted(p for p in users.iterdir() if p.is_dir()) if users.is_dir() else []


@dataclass(frozen=True)
class User:
    name: str
    role: str        # owner (local) | teacher | student | member (Space) | visitor
    policy: Policy

    # ---- what they may do -------------------------------------------------------------------
    @property
    def can_train(self) -> bool:
        return self.role != "visitor"

    @property
    def sees_all(self) -> bool:
        return self.role in ("owner", "teacher")

    # ---- their folders ----------------------------------------------------------------------
    @property
    def home(self) -> Path:
        if self.policy.mode == "local":
            return self.policy.root
        return self.policy.root / "users" / self.name

    @property
    def runs_dir(self) -> Path:
        return self.home if self.policy.mode == "local" else self.home / "runs"

    @property
    def uploads_dir(self) -> Path:
        return self.home / "uploads"

    def run_folders(self) -> list[Path]:
        """Where the runs this user may see live."""
        if not self.sees_all or self.policy.mode == "local":
            return [self.runs_dir]
        return [home / "runs" for home in self.policy.user_homes()]

    # ---- runs -------------------------------------------------------------------------------
    def run_ref(self, run_dir: str | Path) -> str:
        """The name under which this user asks for a run: `run-id`, or `owner/run-id` for
        someone else's."""
        run_dir = Path(run_dir)
        owner = self._owner_of(run_dir)
        return run_dir.name if owner == self.name else f"{owner}/{run_dir.name}"

    def _owner_of(self, run_dir: Path) -> str:
        if self.policy.mode == "local":
            return self.name
        return run_dir.parent.parent.name

    def run_dir(self, ref: str) -> Path:
        """The folder of a run this user may see, from its ref; AccessError otherwise."""
        ref = str(ref or "").strip()
        owner, _, run_id = ref.rpartition("/")
        owner = owner or self.name
        if not RUN_ID.fullmatch(run_id) or ".." in run_id or not USER_NAME.fullmatch(owner) or \
                "/" in owner:
            raise AccessError(t("access.no_run"))
        if owner != self.name and not (self.sees_all and self.policy.mode != "local"):
            example = self.policy.example_run()
            if example is None or (example.parent.parent.name, example.name) != (owner, run_id):
                raise AccessError(t("access.no_run"))
            return example  # the published example: everyone may look, nobody else may touch
        base = self.runs_dir if owner == self.name else \
            self.policy.root / "users" / owner / "runs"
        path = contained(base / run_id, base)
        if not (path / "config.yaml").is_file():
            raise AccessError(t("access.no_run"))
        return path

    def owns(self, run_dir: Path) -> bool:
        return self._owner_of(Path(run_dir)) == self.name

    # ---- uploads and sources ----------------------------------------------------------------
    def upload_ref(self, path: str | Path) -> str:
        return UPLOAD_PREFIX + Path(path).name

    def upload_path(self, ref: str) -> Path:
        name = str(ref)[len(UPLOAD_PREFIX):]
        if not str(ref).startswith(UPLOAD_PREFIX) or not RUN_ID.fullmatch(name):
            raise AccessError(t("access.no_upload"))
        path = contained(self.uploads_dir / name, self.uploads_dir)
        if not path.is_file():
            raise AccessError(t("access.upload_gone"))
        return path

    def data_source(self, source: str) -> str:
        """What the worker may read for `data.source`: built-in sets, Hub ids and this user's
        uploads everywhere; any path only in local mode."""
        source = str(source or "").strip()
        if source.startswith("builtin:"):
            return source
        if source.startswith(UPLOAD_PREFIX):
            return str(self.upload_path(source))
        if not self.policy.shared:
            return source
        name = source[len(HUB_PREFIX):] if source.startswith(HUB_PREFIX) else source
        if HUB_ID.fullmatch(name) and not name.startswith(".") and ".." not in name:
            # read from the Hub only: "runs/queue.json" or "users" name files and folders of
            # the server's working folder, which loading it as a plain source would read
            return HUB_PREFIX + name
        raise AccessError(t("access.data_source"))

    def display_source(self, source: str) -> str:
        """The ref shown on the page for a stored data source (uploads by name, not path)."""
        source = str(source or "")
        try:
            if Path(source).is_absolute() and \
                    Path(source).resolve().parent == self.uploads_dir.resolve():
                return self.upload_ref(source)
        except OSError:
            pass
        return source[len(HUB_PREFIX):] if source.startswith(HUB_PREFIX) else source

    def model_source(self, source: str) -> str:
        """A model source this user may train: anything locally; in the shared modes the
        built-in model, allowed Hub ids, and folders the server owner listed."""
        source = str(source or "").strip() or "default"
        if not self.policy.shared:
            return source
        allowed = self.policy.limits.allowed_models
        if source in ("default", "embedded", "smollm2-135m-instruct"):
            if allowed and not {"default", "embedded"} & set(allowed):
                raise AccessError(t("access.model.allowed", models=", ".join(allowed)))
            return source
        if source.startswith(("/", ".", "~")) or "\\" in source:
            real = str(Path(source).expanduser().resolve())
            if real in self.policy.local_models:
                return real
            raise AccessError(t("access.model.no_folders"))
        if not HUB_ID.fullmatch(source) or ".." in source:
            raise AccessError(t("access.model.bad_id"))
        if allowed and source not in allowed:
            raise AccessError(t("access.model.allowed", models=", ".join(allowed)))
        return source

    # ---- disk -------------------------------------------------------------------------------
    def disk_used(self) -> int:
        total = 0
        for dirpath, _dirs, files in os.walk(self.home):
            for name in files:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_size
                except OSError:
                    pass
        return total

    def check_quota(self, adding: int = 0) -> None:
        quota = self.policy.limits.disk_quota_mb
        if not self.policy.shared or not quota:
            return
        used = self.disk_used()
        if used + adding > quota * MB:
            raise AccessError(t("access.quota_full", used=f"{used / MB:.0f}", quota=quota))


def contained(path: Path, base: Path) -> Path:
    """`path` with links resolved, if it lies inside `base` (also resolved); else AccessError."""
    base = Path(base).resolve()
    real = Path(path).resolve()
    if real != base and base not in real.parents:
        raise AccessError(t("access.no_file"))
    return real
