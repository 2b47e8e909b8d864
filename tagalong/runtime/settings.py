"""Typed settings read from the environment and validated at start-up.

Each service subclasses `ServiceSettings` with its own prefix (TAGALONG_EMBEDDER_, ...). Settings shared
by every service (auth token, TLS files, log level) have one name for all (TAGALONG_AUTH_TOKEN, ...).
A bad value stops the process with one line naming the variable (`load_settings`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _shared(name: str) -> Any:
    """Alias for a setting that every service reads under one name."""
    return AliasChoices(name)


class SettingError(Exception):
    """A setting whose value is wrong in a way only found at start-up (e.g. Milvus unreachable)."""

    def __init__(self, env_var: str, problem: str) -> None:
        super().__init__(f"{env_var}: {problem}")
        self.env_var = env_var
        self.problem = problem


class TLSSettings(BaseSettings):
    """TLS / mutual TLS files; all empty means plaintext (loopback and in-cluster with a mesh only)."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    tls_cert_file: Path | None = Field(None, validation_alias=_shared("TAGALONG_TLS_CERT_FILE"),
                                       description="PEM certificate of this process (server, or client for mTLS).")
    tls_key_file: Path | None = Field(None, validation_alias=_shared("TAGALONG_TLS_KEY_FILE"),
                                      description="PEM private key of that certificate.")
    # CA that signs peers: servers require client certificates signed by it (mutual TLS); clients
    # verify servers with it.
    tls_ca_file: Path | None = Field(None, validation_alias=_shared("TAGALONG_TLS_CA_FILE"),
                                     description="CA bundle: servers then require client certificates (mTLS).")


class ServiceSettings(TLSSettings):
    """Settings every gRPC service has. Subclasses set env_prefix and the default port."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, env_prefix="TAGALONG_")

    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0 in a container).")
    port: int = Field(50050, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int = Field(
        -1, ge=-1, le=65535, description="Prometheus /metrics port; 0 picks a free one, -1 turns it off."
    )
    grace_seconds: float = Field(10.0, ge=0, le=300, description="In-flight calls get this long on SIGTERM.")
    max_message_mb: int = Field(64, ge=1, le=1024, description="Largest request or response, MiB.")
    max_concurrent_rpcs: int = Field(0, ge=0, description="Calls in flight before RESOURCE_EXHAUSTED (0: no cap).")
    auth_token: SecretStr | None = Field(
        None, validation_alias=_shared("TAGALONG_AUTH_TOKEN"),
        description="When set, every call but health checks must send 'authorization: Bearer <token>'.",
    )
    allow_unauthenticated: bool = Field(
        False, validation_alias=_shared("TAGALONG_ALLOW_UNAUTHENTICATED"),
        description="Serve without a token on a non-loopback address (never in production).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", validation_alias=_shared("TAGALONG_LOG_LEVEL"), description="Log level."
    )
    log_format: Literal["json", "text"] = Field("json", validation_alias=_shared("TAGALONG_LOG_FORMAT"),
                                                description="JSON lines (with request ids) or plain text.")

    @field_validator("auth_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("tls_cert_file", "tls_key_file", "tls_ca_file", mode="before")
    @classmethod
    def _empty_path_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * 1024 * 1024

    @property
    def is_loopback(self) -> bool:
        return self.host in ("127.0.0.1", "localhost", "::1") or self.host.startswith("127.")

    def check_auth(self) -> None:
        """Token auth is on by default outside the local machine: refuse to serve a network without one."""
        if self.auth_token is None and not self.is_loopback and not self.allow_unauthenticated:
            raise SettingError(
                "TAGALONG_AUTH_TOKEN",
                f"required when listening on {self.host} (not loopback); set it, or "
                "TAGALONG_ALLOW_UNAUTHENTICATED=1 behind a mesh that authenticates callers",
            )


class ClientSettings(TLSSettings):
    """How a service or the SDK calls other tagalong services."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, env_prefix="TAGALONG_CLIENT_")

    deadline_seconds: float = Field(30.0, gt=0, description="Deadline of a call that sets none.")
    max_message_mb: int = Field(64, ge=1, le=1024, description="Largest message a client sends or takes, MiB.")
    retry_attempts: int = Field(4, ge=1, le=5, description="Attempts for UNAVAILABLE (the only code retried).")
    auth_token: SecretStr | None = Field(None, validation_alias=_shared("TAGALONG_AUTH_TOKEN"))

    @field_validator("auth_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: Any) -> Any:
        return None if value == "" else value


S = TypeVar("S", bound=BaseSettings)


def env_name(settings_cls: type[BaseSettings], field_name: str) -> str:
    """The environment variable a field is read from."""
    field = settings_cls.model_fields.get(field_name)
    alias = field.validation_alias if field is not None else None
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    if isinstance(alias, str):
        return alias
    prefix = settings_cls.model_config.get("env_prefix", "")
    return f"{prefix}{field_name}".upper()


def describe_error(settings_cls: type[BaseSettings], err: ValidationError) -> str:
    """One line for the first bad value: variable name, the value given, what is wrong."""
    first = err.errors()[0]
    loc = str(first["loc"][0]) if first["loc"] else "?"
    name = loc if loc.startswith("TAGALONG_") else env_name(settings_cls, loc)
    value = first.get("input")
    shown = "" if isinstance(value, dict) or value is None else f"={value!r}"
    return f"bad setting {name}{shown}: {first['msg']}"


def load_settings(settings_cls: type[S], program: str = "tagalong", **overrides: Any) -> S:
    """Read and validate settings; on a bad value print one line naming it and exit with status 2."""
    try:
        return settings_cls(**overrides)
    except ValidationError as err:
        print(f"{program}: {describe_error(settings_cls, err)}", file=sys.stderr)
        raise SystemExit(2) from None
