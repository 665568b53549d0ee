"""Settings for each Moonflower process; the only module that reads environment variables.

Every field can be set as `MOONFLOWER_<FIELD>` in the environment; CLI flags override them.
Secrets (a provider token, a database URL with its password) can also come from a file
named by `MOONFLOWER_PROVIDER_TOKEN_FILE` / `MOONFLOWER_DATABASE_URL_FILE` (or the CLI's
`--token-file` / `--database-url-file`), so they need never be on a command line, where
every local user can read them. Errors never echo an input value.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_MAX_TOKENS = 8192
MAX_SECRET_FILE_BYTES = 64 * 1024


def read_secret_file(path: Path, what: str) -> str:
    """The secret held in the file at `path`: its one line of text, surrounding whitespace
    removed. `ValueError` names the file and `what` it should hold, never its content."""
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"cannot read the {what} file {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        text = ""
    if len(raw) > MAX_SECRET_FILE_BYTES or not text or "\n" in text:
        raise ValueError(f"the {what} file {path} must hold the {what} alone, on one line")
    return text


def _both(value: str, file: str) -> str:
    return f"set {value} or {file}, not both"


_WEB_ORIGIN = re.compile(r"https?://(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(:[0-9]{1,5})?")
_ANY_ORIGIN_REFUSED = (
    "'*' cannot be a CORS allowed origin: the public read-only routes (models, pricing, "
    "health, the attestation feed, the encryption key) already answer every origin, and the "
    "others answer only origins listed by name, e.g. https://app.example"
)


def web_origins(value: object) -> object:
    """A comma-separated or JSON list of origins as a list; other values as they are."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise ValueError(
                "give the CORS allowed origins comma-separated or as a JSON list"
            ) from None
    return [part.strip() for part in text.split(",") if part.strip()]


def web_origin(value: str, position: int) -> str:
    """`value` as a browser sends it in `Origin` (lower case, no trailing slash); a
    `ValueError` for `*` or anything that is not scheme://host[:port]."""
    origin = value.strip().lower().removesuffix("/")
    if origin == "*":
        raise ValueError(_ANY_ORIGIN_REFUSED)
    if not _WEB_ORIGIN.fullmatch(origin):
        raise ValueError(
            f"CORS allowed origin {position} is not a web origin: give scheme://host[:port] "
            "with no path, e.g. https://app.example"
        )
    return origin


def default_data_dir() -> Path:
    return Path.home() / ".moonflower"


class PriceSetting(BaseModel):
    """Micro-USD per million tokens."""

    input: int = Field(ge=0)
    output: int = Field(ge=0)


class CoordinatorSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MOONFLOWER_", extra="ignore", hide_input_in_errors=True
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = None
    """SQLAlchemy async URL; defaults to SQLite inside `data_dir`."""
    database_url_file: Path | None = None
    """A file holding `database_url` (which may carry a password) on one line."""
    database_timeout_s: float = Field(default=5.0, gt=0, le=600)
    """The longest a request waits on the database for one thing (a pooled connection,
    SQLite's write lock, a PostgreSQL connection or statement) before it is answered 503
    (529 on /v1/messages) with Retry-After."""
    redis_url: str | None = None
    """A Redis server (`redis://[[user]:password@]host:port/db`, or `rediss://` for TLS) that
    the coordinator's replicas share live state through: the per-key rate limits, where each
    model has free slots, and the broadcast of key revocations and price changes. None keeps
    that state in this process's memory, for a single coordinator. It may carry a password,
    so it is never logged; every replica must be given the same limits."""
    replica_url: str | None = None
    """Where the other replicas reach this one (`http://10.0.0.5:8000`), to hand it requests
    its providers can serve (`coordinator/forwarding.py`); only read with `redis_url`. None
    means `http://<host>:<port>`, with a wildcard host read as 127.0.0.1: right for replicas
    on one machine only."""
    transport_key_file: Path | None = None
    """The file holding the X25519 private key consumers seal requests to (`GET
    /v1/encryption-key`), as base64 on one line, mode 0600; created with a fresh key when
    missing. Every replica behind one load balancer must use the same file, so any of them
    opens a request sealed to the key another published, and the key outlives restarts.
    `moonflower coordinator serve` and `moonflower up` default to `<data_dir>/transport-key`;
    None elsewhere means a fresh key for each process."""
    default_max_tokens: int = Field(default=DEFAULT_MAX_TOKENS, gt=0)
    model_aliases: dict[str, str] = Field(default_factory=dict)
    """Public model names mapped to served model ids, e.g. {"gpt-4o-mini": "smollm2-135m-instruct"}
    (as JSON in MOONFLOWER_MODEL_ALIASES), for clients that hard-code a model name."""
    first_event_timeout_s: float = Field(default=120.0, gt=0)
    """How long a job may wait for the provider to accept it (its queue, tokenizing)."""
    first_token_timeout_s: float = Field(default=120.0, gt=0)
    """How long after accepting a prompt a provider may take to a first token before the
    job is given to another provider (nothing has reached the consumer yet)."""
    idle_timeout_s: float = Field(default=600.0, gt=0)
    """Longest silence between two events of a running job."""
    heartbeat_timeout_s: float = Field(default=90.0, gt=0)
    """A provider silent this long is dropped and its jobs end (or move, before a token)."""
    allow_anonymous_providers: bool = False
    """Admit providers that present no provider token. Off by default: a provider then
    connects only with a token (`mfp-…`) tying it to an account that answers for it. When on,
    anonymous providers earn for one shared account (`provider:anonymous`) and are recorded
    only as far as docs/trust.md says ("Enrollment and reputation")."""
    min_trust: str = Field(default="self_signed", pattern=r"^(none|self_signed|hardware)$")
    """The lowest provider trust level a job may be routed to; a request may only raise it
    (header `x-moonflower-min-trust`)."""
    challenge_interval_s: float = Field(default=300.0, gt=0)
    challenge_deadline_s: float = Field(default=30.0, gt=0)
    challenge_slack_s: float = Field(default=60.0, ge=0)
    """Routing needs a challenge passed within `challenge_interval_s` plus this slack."""
    attestation_max_age_s: float = Field(default=300.0, gt=0)
    mda_root_pems: tuple[str, ...] = ()
    """PEM roots for device attestation chains; empty means Apple's Enterprise Attestation
    Root CA (the only one a real Mac chains to)."""
    mda_key_binding: Literal["leaf_key", "freshness"] = "freshness"
    """How a chain binds the provider's signing key: Apple's MDM leaf certifies Apple's own
    key, so the freshness code carries SHA-256 over the nonce and the signing key."""
    receipt_timeout_s: float = Field(default=10.0, gt=0)
    """How long after a job's last event its provider's receipt may take to arrive."""
    blessed_code_hashes: frozenset[str] = frozenset()
    """When set, only providers running code with one of these hashes are trusted."""
    model_catalog: dict[str, str] = Field(default_factory=dict)
    """Model id → SHA-256 of its weights; a provider serving other weights is not trusted."""
    tokenizer_files: tuple[Path, ...] = ()
    """GGUF files (as a JSON list in MOONFLOWER_TOKENIZER_FILES) whose vocabularies the
    coordinator counts prompt tokens with, for providers serving those exact weights; the
    bundled models are known without them. Only the vocabulary is loaded, never weights."""
    admin_key: SecretStr | None = None
    """Bearer key for admin operations (`PUT /v1/admin/pricing`); none means no admin API."""
    default_price: PriceSetting = PriceSetting(input=50_000, output=200_000)
    """What a model without its own price costs, in micro-USD per million tokens."""
    model_prices: dict[str, PriceSetting] = Field(default_factory=dict)
    minimum_charge_micro_usd: int = Field(default=100, ge=0)
    """The least a billed request costs ($0.0001 by default)."""
    platform_fee_percent: float = Field(default=5.0, ge=0, le=100)
    """The platform's part of each charge; the provider earns the rest."""
    shutdown_grace_s: float = Field(default=60.0, ge=0)
    """On SIGTERM, how long requests in flight may take to finish before they are cut."""
    max_job_duration_s: float = Field(default=3600.0, gt=0)
    """The longest a job may run, by the wall clock from when it was sent to its provider,
    whether or not its consumer reads; then it is cancelled and settled."""
    hold_lease_s: float = Field(default=120.0, ge=1)
    """How long a hold's lease lasts; the coordinator running its job renews it every third
    of that. Holds whose lease ran out (their coordinator stopped) are released."""
    queue_max_waiting: int = Field(default=64, ge=0)
    """Requests that may wait per model for a busy provider; beyond that they are refused."""
    queue_max_wait_s: float = Field(default=30.0, gt=0)
    """How long a request may wait in its model's queue before it is refused as overloaded."""
    api_key_cache_s: float = Field(default=5.0, ge=0)
    """How long the coordinator remembers whose an API key is, so most requests authenticate
    without a database transaction. A revocation is broadcast to every replica, which forget
    the key at once; this bounds it when that message is lost. 0: never remember."""
    price_list_cache_s: float = Field(default=2.0, ge=0)
    """How long the coordinator reuses the price list it read. An admin's change is broadcast
    to every replica, which read the prices again at once; this bounds it when that message
    is lost. 0: read them for every use."""
    rate_limit_requests_per_minute: int | None = Field(default=None, gt=0)
    """Requests each API key may make per minute (a token bucket); none means unlimited."""
    rate_limit_tokens_per_minute: int | None = Field(default=None, gt=0)
    """Prompt plus completion tokens each API key may use per minute; none means unlimited."""
    max_messages: int = Field(default=2048, gt=0)
    """The most messages (or input items) one request may carry."""
    sse_keepalive_s: float = Field(default=15.0, gt=0)
    """Silence after which a stream sends an SSE comment so proxies keep the connection."""
    cors_allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Web origins (scheme://host[:port], e.g. https://app.example) whose pages may call
    the private routes — inference, payments, receipts — from a browser; empty: none may.
    Comma-separated or a JSON list in MOONFLOWER_CORS_ALLOWED_ORIGINS. The public read-only
    routes answer every origin whatever this says, so `*` is refused here."""
    log_level: str = "info"
    access_log: Literal["off", "text", "json"] = "text"
    """One line per request when its answer ends (request id, method, route template,
    status, duration, account, job; never content), at INFO on the `moonflower.access`
    logger: as text, as one JSON object per line (`json`), or not at all."""
    signup: Literal["open", "invite", "closed"] = "open"
    """Who may sign up in the console: anyone (`open`), only with an invitation code from
    `moonflower users invite` (`invite`), or nobody (`closed`; the operator makes users
    with `moonflower users create`)."""
    console_session_hours: float = Field(default=24 * 7, gt=0)
    """How long a console sign-in lasts."""
    secure_cookies: bool | None = None
    """Mark the console's session cookie `Secure` (sent over HTTPS only). None: when the
    request came over HTTPS (as the ASGI server saw it, or a trusted proxy said)."""
    sign_in_failures_per_email: int = Field(default=5, gt=0)
    """Wrong passwords for one email within `sign_in_failure_window_s` before sign-ins to
    it are refused (429) until the oldest of them is that old."""
    sign_in_failures_per_address: int = Field(default=30, gt=0)
    """The same, for every email tried from one network address; each sign-up from the
    address counts too (it costs a password hash as a failure does)."""
    sign_in_failure_window_s: float = Field(default=900.0, gt=0)
    device_code_lifetime_s: int = Field(default=600, gt=0)
    """How long a provider's device login (RFC 8628) may wait for someone to approve it."""
    stats_cache_s: float = Field(default=5.0, ge=0)
    """How long a replica reuses the public stats it computed (`GET /v1/stats`)."""
    device_poll_interval_s: int = Field(default=5, ge=1)
    """How often a provider waiting for approval may poll for its token."""

    @field_validator("cors_allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        return web_origins(value)

    @field_validator("cors_allowed_origins")
    @classmethod
    def _check_origins(cls, origins: list[str]) -> list[str]:
        checked = [web_origin(origin, n) for n, origin in enumerate(origins, 1)]
        return list(dict.fromkeys(checked))

    @property
    def reachable_url(self) -> str:
        """Where the other replicas reach this one: `replica_url`, else host and port."""
        if self.replica_url:
            return self.replica_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    @model_validator(mode="after")
    def _database_url_from_file(self) -> Self:
        if self.database_url_file is not None:
            if self.database_url is not None:
                raise ValueError(_both("MOONFLOWER_DATABASE_URL", "MOONFLOWER_DATABASE_URL_FILE"))
            self.database_url = read_secret_file(self.database_url_file, "database URL")
        return self


class ProviderSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MOONFLOWER_PROVIDER_", extra="ignore", hide_input_in_errors=True
    )

    coordinator: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["http://127.0.0.1:8000"]
    )
    """The coordinator's base URL, or several, comma-separated (replicas of one network, or
    one load balancer in front of them): the provider serves through one at a time and,
    when it loses that one, moves on to the next."""
    model: str = "default"
    engine: str = "llama_cpp"
    token: SecretStr | None = None
    """A provider token (`mfp-…`) naming the account this provider's earnings go to."""
    token_file: Path | None = None
    """A file holding `token` on one line."""
    data_dir: Path = Field(default_factory=default_data_dir)
    context_length: int | None = Field(default=None, gt=0)
    slots: int = Field(default=2, ge=1)
    """How many jobs run at once, each on its own llama.cpp context sharing the weights'
    pages. Two, as many as the 2-core reference machine has cores: there two slots give
    1.8x the tokens/s of one, and four give no more while each job runs at half the speed
    (benchmarks/README.md). Every slot holds a KV cache of its own (about 200 MB for the
    default model at 8k context)."""
    heartbeat_interval_s: float = Field(default=5.0, gt=0)
    drain_timeout_s: float = Field(default=120.0, ge=0)
    """On SIGTERM, how long running jobs may take to finish before the provider stops."""
    stream_batch_interval_s: float = Field(default=0.02, ge=0)
    """Text generated within this interval of the last frame sent is joined into one frame."""
    backoff_initial_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=5.0, gt=0)
    log_level: str = "info"

    @field_validator("coordinator", mode="before")
    @classmethod
    def _split_coordinators(cls, value: object) -> object:
        """`a,b` from the environment, or `[a, "b,c"]` from repeated flags, as `[a, b, c]`."""
        given = [value] if isinstance(value, str) else value
        if not isinstance(given, list | tuple):
            return value
        if not all(isinstance(item, str) for item in given):
            return given
        return [part.strip() for item in given for part in item.split(",") if part.strip()]

    @field_validator("coordinator")
    @classmethod
    def _check_coordinators(cls, urls: list[str]) -> list[str]:
        if not urls:
            raise ValueError("give at least one coordinator URL")
        return list(dict.fromkeys(urls))

    @model_validator(mode="after")
    def _token_from_file(self) -> Self:
        if self.token_file is not None:
            if self.token is not None:
                raise ValueError(
                    _both("MOONFLOWER_PROVIDER_TOKEN", "MOONFLOWER_PROVIDER_TOKEN_FILE")
                )
            self.token = SecretStr(read_secret_file(self.token_file, "provider token"))
        return self
