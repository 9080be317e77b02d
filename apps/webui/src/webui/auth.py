"""Who may use the UI: the exposure check, credentials, and slowing down password guessing.

Standard library only: the command line runs :func:`check_exposure` and reads
credentials before torch or Gradio are imported, so a refusal is immediate.

Credentials come, safest first, from a file (``--auth-file``), from the
``YUREN_WEBUI_AUTH`` environment variable, or from ``--auth USER:PASS`` on the
command line, which every local user can read in ``ps`` (it still works, with
a warning). :class:`LoginThrottle` makes each client wait longer after every
failed login, so guessing a password of :data:`MIN_PASSWORD_LENGTH` characters
is impractical.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import stat
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

AUTH_ENV = "YUREN_WEBUI_AUTH"
MIN_PASSWORD_LENGTH = 10

ARGV_AUTH_WARNING = (
    "--auth puts the password on the command line, where every user of this machine can read it (ps); "
    f"use --auth-file FILE (one line USER:PASS, readable only by you) or the {AUTH_ENV} environment variable"
)


class ExposureRefused(RuntimeError):
    """Serving beyond localhost without authentication, and the operator did not insist."""


class CredentialsError(ValueError):
    """Credentials that cannot be used; the message says where they came from and what to do."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        # A host name may resolve to any interface: treat it as public.
        return False


def check_exposure(
    server_name: str,
    *,
    share: bool,
    auth: tuple[str, str] | None,
    allow_unauthenticated_public: bool = False,
) -> None:
    """Raise :class:`ExposureRefused` when the server would be reachable by others without a password."""
    if auth is not None or allow_unauthenticated_public:
        return
    safe_way = f"--auth-file FILE or {AUTH_ENV}=USER:PASS"
    if share:
        raise ExposureRefused(
            f"--share True publishes the UI on a public gradio.live link; protect it with {safe_way} "
            "(or pass --allow-unauthenticated-public to serve it to anyone)"
        )
    if not is_loopback(server_name):
        raise ExposureRefused(
            f"--server_name {server_name} makes the UI reachable from other machines; protect it with {safe_way} "
            "(or pass --allow-unauthenticated-public to serve it to anyone on the network)"
        )


def parse_auth(value: str, *, source: str = "--auth") -> tuple[str, str]:
    """``user:pass`` -> ``(user, pass)``; the password may itself contain colons but must be long enough."""
    user, sep, password = value.strip("\r\n").partition(":")
    if not sep or not user or not password:
        raise CredentialsError(f"{source}: expected USER:PASS with both parts non-empty")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise CredentialsError(
            f"{source}: the password has {len(password)} characters; use at least {MIN_PASSWORD_LENGTH}"
        )
    return user, password


def read_auth_file(path: str | PathLike) -> tuple[str, str]:
    """Read ``USER:PASS`` from the first non-empty line of ``path`` (lines starting with ``#`` are comments)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise CredentialsError(f"--auth-file {path}: cannot read it ({error})") from None
    for line in lines:
        if line.strip() and not line.lstrip().startswith("#"):
            return parse_auth(line, source=f"--auth-file {path}")
    raise CredentialsError(f"--auth-file {path}: no USER:PASS line in it")


def auth_file_is_private(path: str | PathLike) -> bool:
    """Whether only the owner may read ``path`` (no group or other permission bits)."""
    return not Path(path).stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO)


def resolve_credentials(
    *, argv_auth: str | None, auth_file: str | PathLike | None, environ: Mapping[str, str] | None = None
) -> tuple[str, str] | None:
    """The credentials from exactly one of ``--auth-file``, ``$YUREN_WEBUI_AUTH`` or ``--auth`` (or ``None``).

    ``environ`` defaults to ``os.environ`` as it is at the call: a default bound at import would keep reading
    the old mapping after a library replaces ``os.environ`` (``datasets``' ``map(num_proc=...)`` does).
    """
    environ = os.environ if environ is None else environ
    sources = {
        "--auth-file": auth_file is not None,
        AUTH_ENV: bool(environ.get(AUTH_ENV)),
        "--auth": argv_auth is not None,
    }
    given = [name for name, present in sources.items() if present]
    if len(given) > 1:
        raise CredentialsError(f"credentials given more than once ({', '.join(given)}); give them one way")
    if auth_file is not None:
        return read_auth_file(auth_file)
    if environ.get(AUTH_ENV):
        return parse_auth(environ[AUTH_ENV], source=AUTH_ENV)
    if argv_auth is not None:
        return parse_auth(argv_auth)
    return None


def password_checker(user: str, password: str) -> Callable[[str, str], bool]:
    """A Gradio ``auth`` callable accepting exactly ``user``/``password``, compared in constant time."""
    expected = (user + "\0" + password).encode("utf-8", "surrogatepass")

    def check(username: str, given: str) -> bool:
        return hmac.compare_digest(expected, (username + "\0" + given).encode("utf-8", "surrogatepass"))

    return check


def client_key(host: str | None) -> str:
    """Whom a failed login is counted against: the address, or its /64 for IPv6 (one host holds a whole /64)."""
    if not host:
        return "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


@dataclass
class _Record:
    failures: int = 0
    locked_until: float = 0.0
    in_flight: bool = False


class LoginThrottle:
    """Per-client backoff for failed logins.

    The first ``free_failures`` failures cost nothing; after that each one
    doubles the wait before the client may try again (``base_delay`` seconds,
    up to ``max_delay``). A client may have one login in flight at a time, so
    parallel guesses do not slip past the wait. A success clears the record.
    At most ``max_clients`` records are kept (the oldest go first).
    """

    def __init__(
        self,
        *,
        free_failures: int = 3,
        base_delay: float = 1.0,
        max_delay: float = 600.0,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.free_failures = free_failures
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_clients = max_clients
        self.clock = clock
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def wait_for(self, key: str) -> float:
        """Seconds ``key`` must wait before its next attempt (0: it may try now, and the attempt is started)."""
        record = self._records.get(key)
        if record is None:
            record = self._records[key] = _Record()
            while len(self._records) > self.max_clients:
                self._records.popitem(last=False)
        self._records.move_to_end(key)
        if record.in_flight:
            return max(self.base_delay, record.locked_until - self.clock())
        wait = record.locked_until - self.clock()
        if wait > 0:
            return wait
        record.in_flight = True
        return 0.0

    def finished(self, key: str, *, success: bool) -> None:
        """Record how the attempt :meth:`wait_for` started ended."""
        record = self._records.setdefault(key, _Record())
        record.in_flight = False
        if success:
            del self._records[key]
            return
        record.failures += 1
        over = record.failures - self.free_failures
        if over > 0:
            record.locked_until = self.clock() + min(self.max_delay, self.base_delay * 2 ** min(over - 1, 32))
