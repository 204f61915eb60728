"""Settings: every knob of the application, declared once, validated once, frozen.

Values come from, in increasing priority:

1. the defaults declared below;
2. an optional TOML file named by ``STREAMS_APP_CONFIG`` (keys are the field
   names, e.g. ``processing_guarantee = "exactly_once"``);
3. environment variables (the ``env`` name of each field).

Faust reads some of the same environment variables itself (``BROKER_URL``,
``PROCESSING_GUARANTEE``, ``WEB_PORT``...). To keep one source of truth, the
app hands Faust the values validated here and an environment *without* those
variables (see :meth:`Settings.faust_env`), so a raw string can never bypass
validation.

Values are shown (``show-settings``, error messages) through
:func:`common.redact.mask_url`: a password in ``SINK_DB``, ``PAYMENT_API_URL``
or ``BROKER_URL`` is never printed.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, get_args
from urllib.parse import urlparse

from common.durations import parse_duration
from common.redact import mask_url
from faust_guarantees import FIXES
from infra.kafka import replication_defaults

from .exceptions import SettingsError
from .memory import MMAP_THRESHOLD_MAX

Guarantee = Literal["at_least_once", "exactly_once", "at_most_once"]
SinkMode = Literal["idempotent", "naive", "transactional"]
SinkTarget = Literal["database", "api"]
LogFormat = Literal["text", "json"]

#: ``at_most_once`` is not a Faust guarantee: it is Faust's at_least_once with
#: the sink committing the offset *before* the side effect (the lab's
#: "lost message" mode). The other two are passed to Faust as they are.
FAUST_GUARANTEE: Mapping[str, str] = {
    "at_least_once": "at_least_once",
    "exactly_once": "exactly_once",
    "at_most_once": "at_least_once",
}

def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected true or false")


def _choice(allowed: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip()
        if value not in allowed:
            raise ValueError(f"use one of: {', '.join(allowed)}")
        return value

    return parse


def _at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise ValueError(f"expected a whole number of at least {low}")
        return value
    return parse


_positive_int = _at_least(1)


def _mmap_threshold(text: str) -> int:
    value = int(text)
    if not 0 <= value <= MMAP_THRESHOLD_MAX:
        raise ValueError(f"expected 0 (glibc's own threshold) or a size in bytes up to {MMAP_THRESHOLD_MAX:,} (32 MiB)")
    return value


def _positive_duration(text: str) -> float:
    value = parse_duration(text)
    if value <= 0:
        raise ValueError("expected a duration greater than 0, e.g. 0.1 or 100ms")
    return value


#: A fetch waits up to 1.5 s at the broker for records (Faust's fetch_max_wait), a metadata
#: answer from a loaded cluster a few seconds: a shorter request timeout fails healthy requests.
MIN_REQUEST_TIMEOUT_S = 5.0


def _request_timeout(text: str) -> float:
    value = parse_duration(text)
    if value < MIN_REQUEST_TIMEOUT_S:
        raise ValueError(f"expected at least {MIN_REQUEST_TIMEOUT_S:.0f} s (a fetch alone may wait 1.5 s at the "
                         "broker), e.g. 30 (Kafka's default) or 10s")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise ValueError("expected a TCP port from 1 to 65535")
    return value


_BROKER_URL_FORMS = (
    "expected kafka://HOST:PORT, or for a cluster a host list in Faust's syntax "
    "kafka://HOST1:PORT1;HOST2:PORT2;HOST3:PORT3 (',' works too), e.g. kafka://127.0.0.1:9092"
)


def broker_hosts(url: str) -> tuple[str, ...]:
    """``HOST:PORT`` of every host in a BROKER_URL, in order.

    Takes what Faust's ``faust.utils.urls.urllist`` takes: hosts separated by ``;``
    or ``,``, the scheme written once (``kafka://a:9092;b:9092``) or on every host
    (``kafka://a:9092;kafka://b:9092``). Unlike Faust, every host must name its port
    and the scheme must be ``kafka``: a typo should stop the worker, not default.
    """
    parts = [part.strip() for part in re.split(r"[;,]", url) if part.strip()]
    if not parts or not parts[0].startswith("kafka://"):
        raise ValueError(_BROKER_URL_FORMS)
    hosts = []
    for part in parts:
        parsed = urlparse(part if "://" in part else f"kafka://{part}")
        try:
            port = parsed.port
        except ValueError:
            port = None
        if parsed.scheme != "kafka" or not parsed.hostname or not port or parsed.path not in {"", "/"}:
            raise ValueError(f"{part!r}: {_BROKER_URL_FORMS}")
        hosts.append(f"{parsed.hostname}:{port}")
    return tuple(hosts)


def _broker_url(text: str) -> str:
    broker_hosts(text)
    return text.strip()


#: REPLICATION_FACTOR / MIN_INSYNC_REPLICAS left unset: derived in Settings.__post_init__.
AUTO: Final = 0


def _store_url(text: str) -> str:
    if text not in {"rocksdb://", "memory://"}:
        raise ValueError("use rocksdb:// (persistent, the default) or memory:// (tests only)")
    return text


def _sink_db(text: str) -> str:
    scheme = urlparse(text).scheme
    if scheme not in {"sqlite", "postgresql", "postgres"}:
        raise ValueError(
            "expected sqlite:///path/to/file.db or postgresql://user:pass@host:port/db"
        )
    if scheme != "sqlite":
        _check_postgres_dsn(text)
    return text


def _check_postgres_dsn(text: str) -> None:
    """libpq's own parser, so a malformed DSN stops the start instead of every charge."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(text)
    except ProgrammingError as exc:
        raise ValueError(f"not a valid PostgreSQL URL ({mask_url(str(exc).strip(), text)})") from None


def _http_url(text: str) -> str:
    url = urlparse(text)
    if url.scheme not in {"http", "https"} or not url.hostname:
        raise ValueError("expected http://HOST:PORT, e.g. http://127.0.0.1:8081")
    return text.rstrip("/")


def _name(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,120}", text):
        raise ValueError("expected 1-120 characters of letters, digits, '.', '_' or '-'")
    return text


def _fix_list(text: str) -> tuple[str, ...]:
    value = text.strip().lower()
    if value in {"all", ""}:
        return tuple(FIXES)
    if value == "none":
        return ()
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    unknown = [n for n in names if n not in FIXES]
    if unknown:
        raise ValueError(
            f"unknown fix {', '.join(unknown)}; use all, none, or a comma list of: {', '.join(FIXES)}"
        )
    return names


#: The pipeline's stages, in the order records flow through them (agents/, one module each).
STAGES: Final = ("dedup", "apply", "sink")


def _stage_list(text: str) -> tuple[str, ...]:
    value = text.strip().lower()
    if value in {"all", ""}:
        return STAGES
    names = {n.strip() for n in value.split(",") if n.strip()}
    unknown = sorted(names - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stage {', '.join(unknown)}; use all or a comma list of: {', '.join(STAGES)}")
    return tuple(stage for stage in STAGES if stage in names)


def _setting(env: str, default: Any, parse: Callable[[str], Any], doc: str) -> Any:
    return field(default=default, metadata={"env": env, "parse": parse, "doc": doc})


@dataclass(frozen=True)
class Settings:
    """The validated, immutable configuration of one worker process."""

    processing_guarantee: Guarantee = _setting(
        "PROCESSING_GUARANTEE", "at_least_once", _choice(get_args(Guarantee)),
        "at_least_once: nothing lost, effects may repeat; exactly_once: Kafka "
        "transactions (one per partition); at_most_once: every stage commits an "
        "event's offset before working on it (the lab's lost-message mode).",
    )
    broker_url: str = _setting(
        "BROKER_URL", "kafka://127.0.0.1:9092", _broker_url,
        "Kafka bootstrap servers: kafka://HOST:PORT, or a list kafka://H1:P1;H2:P2;H3:P3. "
        "`kafka start`, `demo` and the lab start a local broker (one host) or cluster "
        "(several) on those ports only when every host is 127.0.0.1 or localhost.",
    )
    replication_factor: int = _setting(
        "REPLICATION_FACTOR", AUTO, _positive_int,
        "Replicas of every pipeline topic and changelog. Default: 1 when BROKER_URL names "
        "one host, 2 for two, 3 for three or more (a partial bootstrap list of a bigger "
        "cluster: set it).",
    )
    min_insync_replicas: int = _setting(
        "MIN_INSYNC_REPLICAS", AUTO, _positive_int,
        "min.insync.replicas of every pipeline topic and changelog: an acks=all write "
        "fails unless this many replicas have it. Default: 2 when REPLICATION_FACTOR is "
        "3 or more, else 1. At most REPLICATION_FACTOR.",
    )
    app_id: str = _setting(
        "APP_ID", "payments-pipeline", _name,
        "Faust app id: consumer group, transactional id and changelog prefix.",
    )
    topic_prefix: str = _setting(
        "TOPIC_PREFIX", "payments", _name,
        "Prefix of the pipeline's topics: {prefix}.raw, .dlq, .events, .unique, .applied.",
    )
    partitions: int = _setting(
        "TOPIC_PARTITIONS", 4, _positive_int,
        "Partitions of every pipeline topic (and so of every changelog).",
    )
    store: str = _setting(
        "STORE_URL", "rocksdb://", _store_url,
        "Table store: rocksdb:// (rocksdict, survives restarts) or memory://.",
    )
    store_memory_mb: int = _setting(
        "STORE_MEMORY_MB", 128, _at_least(16),
        "Memory of all the worker's RocksDB table stores together, in MB: three quarters "
        "memtables (split over every table partition, each flushed to disk when full), a "
        "quarter one shared block cache. Faust's defaults (3 x 64 MB memtables and a 2 GiB "
        "cache per store) let RSS grow with every row written (streams_app/stores.py).",
    )
    datadir: str = _setting(
        "APP_DATADIR", "", str,
        "Where RocksDB tables live; default ./{app_id}-data.",
    )
    web_bind: str = _setting(
        "WEB_BIND", "127.0.0.1", str,
        "Interface of the web server (Faust's default 0.0.0.0 would expose it).",
    )
    web_port: int = _setting("WEB_PORT", 6066, _port, "Port of the web server.")
    web_tables_enabled: bool = _setting(
        "WEB_TABLES_ENABLED", False, parse_bool,
        "Turn on Faust's raw /table/ endpoints (off: they dump raw table values).",
    )
    dedup_horizon: float = _setting(
        "DEDUP_HORIZON", 7 * 86400.0, parse_duration,
        "How long an event id is remembered (e.g. 24h, 7d). Older ids may be "
        "forgotten: a re-send older than this is applied again.",
    )
    commit_interval: float = _setting(
        "BROKER_COMMIT_INTERVAL", float(AUTO), _positive_duration,
        "How often offsets are committed (under exactly_once: every partition's transaction; "
        "downstream sees an output only after it, so each hop adds about half of it to the "
        "latency). Default 0.1 s under exactly_once (as Kafka Streams), 1 s otherwise "
        "(reports/bench.md has the curve it was chosen from).",
    )
    producer_linger: float = _setting(
        "PRODUCER_LINGER", 0.005, parse_duration,
        "How long the producer waits to fill a batch before sending it (Faust's default 0: one "
        "produce request per record and per producer; 5 ms measured best here, reports/bench.md).",
    )
    kafka_request_timeout: float = _setting(
        "KAFKA_REQUEST_TIMEOUT", 30.0, _request_timeout,
        "The longest wait for a broker's answer to one request of the worker's producers and "
        "of its consumer's fetches (Kafka's request.timeout.ms); a request that times out goes "
        "again, to the partition's new leader if it moved. Faust's own: 1200 s for the "
        "producers, 90 s for the fetches, so a hung broker held the pipeline that long "
        "(faust_guarantees/fixes/bounded_kafka_requests.py).",
    )
    consumer_max_fetch_size: int = _setting(
        "CONSUMER_MAX_FETCH_SIZE", 4 * 1024 * 1024, _positive_int,
        "Most bytes one fetch brings per partition (Faust's default 1 MiB). aiokafka keeps one "
        "fetch per partition ahead of the stages, and a fetch comes back in 0.4-0.8 s while the "
        "worker is busy: at 1 MiB the dedup stage waited for records a fifth of the time, at "
        "4 MiB almost never (reports/bench.md). Memory: up to this much per assigned partition.",
    )
    max_poll_records: int = _setting(
        "MAX_POLL_RECORDS", 10_000, _at_least(0),
        "Most records the consumer decodes in one poll, over every partition (Faust's "
        "broker_max_poll_records, unbounded by default); 0: no bound. A decoded record is a few "
        "hundred bytes of Python objects: unbounded, a worker catching up a backlog decodes all "
        "it fetched (up to CONSUMER_MAX_FETCH_SIZE per partition) at once, and CPython keeps the "
        "arenas that burst pinned. In a 300,000-record catch-up over 4 partitions 10,000 cut the "
        "dedup stage's peak RSS from 211-227 to 173-184 MB at no throughput cost beyond the runs' "
        "noise; 2,000 cut it to ~160 MB but cost 15-17 %: records left in the client hold back "
        "its next fetch. A worker reading ONE partition loses ~25 % at_least_once throughput to "
        "10,000 for 10 MB: set 0 there (decision 0053).",
    )
    batch_max: int = _setting(
        "BATCH_MAX", 1000, _positive_int,
        "Most records a stage takes in one batch: what is already fetched, never waited "
        "for (one ack wait, one table write per key and one commit-gate pass per batch).",
    )
    stages: tuple[str, ...] = _setting(
        "STAGES", STAGES, _stage_list,
        "The stages this worker runs: all (default) or a comma list of dedup, apply, sink. "
        "Every worker of one APP_ID (one consumer group) must run the same stages; run stages "
        "apart as separate apps (another APP_ID, the same TOPIC_PREFIX), e.g. the CPU-bound "
        "dedup and apply apart from the I/O-bound sink.",
    )
    max_record_bytes: int = _setting(
        "MAX_RECORD_BYTES", 16 * 1024, _positive_int,
        "Raw records larger than this go to the DLQ as oversize.",
    )
    max_amount: int = _setting(
        "MAX_AMOUNT", 100_000_000_00, _positive_int,
        "Largest accepted amount in minor units; larger is absurd and dead-lettered.",
    )
    sink_db: str = _setting(
        "SINK_DB", "sqlite:///payments-sink.db", _sink_db,
        "The external database the sink charges into: sqlite:///file or postgresql://...",
    )
    sink_mode: SinkMode = _setting(
        "SINK_MODE", "idempotent", _choice(get_args(SinkMode)),
        "idempotent: idempotency key = event id, unique constraint, insert-or-ignore; "
        "naive: plain insert (shows why keys are needed); transactional: the charge and "
        "the record's offset in ONE database transaction (the Kafka commit no longer matters).",
    )
    sink_target: SinkTarget = _setting(
        "SINK_TARGET", "database", _choice(get_args(SinkTarget)),
        "Where the sink's effect goes: database (SINK_DB) or api (the payment API at "
        "PAYMENT_API_URL: naive = no Idempotency-Key and retries on timeout, idempotent = "
        "key = event id). transactional needs database: an HTTP call cannot join a database "
        "transaction.",
    )
    payment_api_url: str = _setting(
        "PAYMENT_API_URL", "http://127.0.0.1:8081", _http_url,
        "Base URL of the payment API (python -m payment_api serve) for SINK_TARGET=api.",
    )
    payment_api_timeout: float = _setting(
        "PAYMENT_API_TIMEOUT", 2.0, parse_duration,
        "Seconds the sink waits for the payment API before it retries the charge.",
    )
    sink_give_up_after: float = _setting(
        "SINK_GIVE_UP_AFTER", 300.0, parse_duration,
        "How long the sink keeps trying ONE record's charge that its target keeps failing (an "
        "error, a 5xx, a timeout) while it takes other records' charges: then the record is "
        "dead-lettered (code effect_failed, the target's last answer as the reason; `dlq replay` "
        "sends it again once the target is fixed). While no charge goes through (an outage) "
        "nothing is dead-lettered, however long it lasts. 0: never give up (the record holds "
        "its batch until the target takes it).",
    )
    producer_idempotence: bool = _setting(
        "PRODUCER_IDEMPOTENCE", True, parse_bool,
        "Idempotent producer (KIP-98) under at_least_once too, so a retry after a lost "
        "ack is not appended twice. Faust itself enables it only under exactly_once.",
    )
    mmap_threshold: int = _setting(
        "MMAP_THRESHOLD", 128 * 1024, _mmap_threshold,
        "Blocks of at least this many bytes get memory of their own from the system and give "
        "it back when freed (glibc's M_MMAP_THRESHOLD, fixed at the worker's start; 0 leaves "
        "glibc's own). glibc's default starts at 128 KiB and rises to the largest block freed, "
        "up to 32 MiB: fetch buffers then came from the heap, and in the soak malloc kept "
        "13-32 MB freed after restarts; fixed, 1-5 MB (streams_app/memory.py).",
    )
    gc_tuning: bool = _setting(
        "GC_TUNING", True, parse_bool,
        "Once the worker has started: gc.freeze() (what start-up built is never scanned "
        "again) and a first-generation threshold of 50,000 allocations instead of 700. "
        "Python's collector otherwise took 9 % of the dedup stage's CPU, mostly full "
        "collections of 30-45 ms over Faust's own objects (reports/bench.md).",
    )
    log_format: LogFormat = _setting(
        "LOG_FORMAT", "text", _choice(get_args(LogFormat)),
        "text (Faust's own) or json: one JSON object per line, with stage, topic, partition, "
        "offset and event id where a log call has them (streams_app/logs.py).",
    )
    faust_fixes: tuple[str, ...] = _setting(
        "FAUST_FIXES", tuple(FIXES), _fix_list,
        "Workarounds for faust-streaming delivery bugs (faust_guarantees/fixes/): "
        "all (default), none (stock Faust, to see the bugs in the lab), or a comma list.",
    )
    faust_fixes_unverified: str = _setting(
        "FAUST_FIXES_UNVERIFIED", "fail", _choice(("fail", "warn")),
        "What the worker does when the installed faust-streaming or aiokafka is not the code "
        "the Faust fixes were verified on: fail at start-up naming the fixes to re-verify "
        "(default), or warn and run.",
    )

    def __post_init__(self) -> None:
        """Fill in the replication settings left to AUTO, from the hosts in BROKER_URL."""
        if self.replication_factor == AUTO:
            replication = replication_defaults(len(broker_hosts(self.broker_url)))[0]
            object.__setattr__(self, "replication_factor", replication)
        if self.min_insync_replicas == AUTO:
            object.__setattr__(self, "min_insync_replicas", replication_defaults(self.replication_factor)[1])
        if self.commit_interval == AUTO:
            object.__setattr__(self, "commit_interval", DEFAULT_COMMIT_INTERVAL[self.faust_guarantee])

    # -- derived values -------------------------------------------------------

    @property
    def faust_guarantee(self) -> str:
        return FAUST_GUARANTEE[self.processing_guarantee]

    @property
    def table_dir(self) -> Path:
        return Path(self.datadir or f"{self.app_id}-data")

    @property
    def broker_hosts(self) -> tuple[str, ...]:
        """``host:port`` of every host in BROKER_URL."""
        return broker_hosts(self.broker_url)

    @property
    def bootstrap(self) -> str:
        """``h1:p1,h2:p2,...`` (every host of BROKER_URL, no userinfo) for clients other than
        Faust (aiokafka, the lab)."""
        return ",".join(self.broker_hosts)

    @property
    def topic_configs(self) -> dict[str, str]:
        """Configs every topic of the pipeline is created with (pipeline topics and changelogs)."""
        return {"min.insync.replicas": str(self.min_insync_replicas)}

    def shown(self, name: str) -> str:
        """The value of setting ``name`` as it may be printed: passwords masked."""
        return mask_url(_show(getattr(self, name)))

    def fix_enabled(self, name: str) -> bool:
        assert name in FIXES, name
        return name in self.faust_fixes

    def topic(self, suffix: str) -> str:
        return f"{self.topic_prefix}.{suffix}"

    def faust_env(self, environ: Mapping[str, str]) -> dict[str, str]:
        """The environment Faust may read: ours minus the variables owned here."""
        owned = {f.metadata["env"] for f in dataclasses.fields(self)} | _FAUST_TWINS
        return {k: v for k, v in environ.items() if k not in owned}

    # -- construction ---------------------------------------------------------

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read defaults, the optional TOML file, then the environment; validate all."""
        environ = os.environ if environ is None else environ
        raw: dict[str, tuple[str, str]] = {}  # field -> (where it came from, text)
        problems: list[str] = []
        config_path = environ.get("STREAMS_APP_CONFIG")
        if config_path:
            raw.update(_read_config_file(Path(config_path), problems))
        for f in dataclasses.fields(cls):
            env = f.metadata["env"]
            if env in environ:
                raw[f.name] = (env, environ[env])
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in raw:
                continue
            source, text = raw[f.name]
            try:
                values[f.name] = f.metadata["parse"](str(text))
            except ValueError as exc:
                problems.append(mask_url(f"{source}={text!r} is invalid: {exc}", str(text)))
        if problems:
            raise SettingsError(problems)
        settings = cls(**values)
        if settings.min_insync_replicas > settings.replication_factor:
            raise SettingsError([
                f"MIN_INSYNC_REPLICAS={settings.min_insync_replicas} is more than REPLICATION_FACTOR="
                f"{settings.replication_factor}: no acks=all write could ever succeed; lower "
                "MIN_INSYNC_REPLICAS or raise REPLICATION_FACTOR",
            ])
        if settings.sink_mode == "transactional" and settings.sink_target != "database":
            raise SettingsError([
                "SINK_MODE='transactional' needs SINK_TARGET='database': the offset can be stored "
                "with the effect only in the same database transaction; use SINK_MODE=idempotent "
                "with SINK_TARGET=api",
            ])
        return settings

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """(env name, default, doc) of every setting: for the README and --help."""
        return [
            (f.metadata["env"], "auto" if f.name in _DERIVED else _show(f.default), f.metadata["doc"])
            for f in dataclasses.fields(cls)
        ]


def _show(value: Any) -> str:
    return ",".join(value) if isinstance(value, tuple) else str(value)


#: Settings whose default is derived from others (AUTO until __post_init__).
_DERIVED = {"replication_factor", "min_insync_replicas", "commit_interval"}

#: BROKER_COMMIT_INTERVAL by guarantee, when not set (see its doc).
DEFAULT_COMMIT_INTERVAL: Mapping[str, float] = {"exactly_once": 0.1, "at_least_once": 1.0}

#: Faust's own names for settings we own under another name; hidden from Faust.
_FAUST_TWINS = {"APP_STORE", "APP_WEB_TABLES_ENABLED", "TOPIC_REPLICATION_FACTOR"}


def _read_config_file(path: Path, problems: list[str]) -> dict[str, tuple[str, str]]:
    names = {f.name for f in dataclasses.fields(Settings)}
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        problems.append(f"STREAMS_APP_CONFIG={str(path)!r} cannot be read: {exc}")
        return {}
    found: dict[str, tuple[str, str]] = {}
    for key, value in data.items():
        if key not in names:
            problems.append(
                f"{path}: unknown key {key!r}; known keys: {', '.join(sorted(names))}"
            )
            continue
        text = str(value).lower() if isinstance(value, bool) else str(value)
        found[key] = (f"{path}:{key}", text)
    return found
