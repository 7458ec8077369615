"""Secrets from files, for Docker and Kubernetes secrets: nothing secret has to sit in the environment.

- `<VARIABLE>_FILE` names a file holding the variable's value: `CMSBOT_SLACK_BOT_TOKEN_FILE`,
  `CMSBOT_SLACK_SIGNING_SECRET_FILE`, `CMSBOT_SLACK_APP_TOKEN_FILE`, `CMSBOT_WINRM_PASSWORD_FILE`,
  `REDIS_URL_FILE` (or `CMSBOT_REDIS_URL_FILE`).
- `CMSBOT_SECRETS_DIR` names a directory of such files, each named after its variable in lower or
  upper case (`cmsbot_slack_bot_token`, `redis_url`, ...): pydantic-settings' `secrets_dir`.

A variable set (non-empty) in the environment wins over its `_FILE`, which wins over the directory.
The value is the file's text without surrounding white space; an empty file counts as unset. A
file that cannot be read is a configuration error naming the variable and the path, never the value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SecretsSettingsSource, SettingsError

SECRETS_DIR = "CMSBOT_SECRETS_DIR"


def read_secret(path: str | Path, variable: str) -> str:
    """The text of a secret file, stripped; a SettingsError naming `variable` when it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as e:
        raise SettingsError(f"{variable}: cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise SettingsError(f"{variable}: {path} is not UTF-8 text") from None


class FileSecrets(PydanticBaseSettingsSource):
    """`<VARIABLE>_FILE` for each of `variables` (field name -> the variables that may set it)."""

    def __init__(self, settings_cls: type[BaseSettings], variables: Mapping[str, Sequence[str]]):
        super().__init__(settings_cls)
        self.variables = variables

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ does the work

    def __call__(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for field, names in self.variables.items():
            for name in names:
                path = os.environ.get(f"{name}_FILE")
                if path:
                    value = read_secret(path, f"{name}_FILE")
                    if value:
                        found[field] = value
                    break
        return found


def secrets_dir() -> Path | None:
    """CMSBOT_SECRETS_DIR, when set; a SettingsError when it is not a directory."""
    value = os.environ.get(SECRETS_DIR)
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise SettingsError(f"{SECRETS_DIR}: {value} is not a directory")
    return path


def sources(settings_cls: type[BaseSettings], init: PydanticBaseSettingsSource, env: PydanticBaseSettingsSource,
            variables: Mapping[str, Sequence[str]]) -> tuple[PydanticBaseSettingsSource, ...]:
    """In order of precedence: arguments in code, the environment, `*_FILE`, CMSBOT_SECRETS_DIR."""
    found: tuple[PydanticBaseSettingsSource, ...] = (init, env, FileSecrets(settings_cls, variables))
    directory = secrets_dir()
    if directory is not None:
        found += (SecretsSettingsSource(settings_cls, secrets_dir=directory),)
    return found


class SecretFileSettings(BaseSettings):
    """Settings whose secrets may come from files: each field named in `secret_variables`, from the
    `<variable>_FILE` of any of its variables, else from CMSBOT_SECRETS_DIR."""

    secret_variables: ClassVar[Mapping[str, Sequence[str]]] = {}

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return sources(settings_cls, init_settings, env_settings, cls.secret_variables)
