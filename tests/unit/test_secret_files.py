"""Every secret can come from a file (`*_FILE`, CMSBOT_SECRETS_DIR); the Slack app asks for the fewest
scopes; docker-compose.yml hands the secrets over as files, never as environment variables."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic_settings import SettingsError

from bot import cli
from bot.config import SECRETS, SlackSettings
from cms.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SECRET_VARIABLES = ("REDIS_URL", "CMSBOT_REDIS_URL", "CMSBOT_WINRM_PASSWORD",
                    *(f"CMSBOT_SLACK_{s.upper()}" for s in SECRETS))


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """Only what each test sets: no secret of the machine running the tests leaks in."""
    for name in [*SECRET_VARIABLES, *(f"{v}_FILE" for v in SECRET_VARIABLES), "CMSBOT_SECRETS_DIR"]:
        monkeypatch.delenv(name, raising=False)


def _file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_each_secret_comes_from_its_file(tmp_path, monkeypatch):
    monkeypatch.setenv("REDIS_URL_FILE", str(_file(tmp_path, "url", "rediss://cmsbot:pw@redis:6380/0\n")))
    monkeypatch.setenv("CMSBOT_WINRM_PASSWORD_FILE", str(_file(tmp_path, "winrm", "  winrm-pw\n")))
    for s in SECRETS:
        monkeypatch.setenv(f"CMSBOT_SLACK_{s.upper()}_FILE", str(_file(tmp_path, s, f"{s}-value\n")))
    settings, slack = Settings(), SlackSettings()
    assert settings.redis_url == "rediss://cmsbot:pw@redis:6380/0"
    assert settings.winrm_password.get_secret_value() == "winrm-pw"
    assert {s: getattr(slack, s).get_secret_value() for s in SECRETS} == {s: f"{s}-value" for s in SECRETS}


def test_the_environment_wins_over_a_file_and_an_empty_file_is_unset(tmp_path, monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://from-the-environment:6379/0")
    monkeypatch.setenv("REDIS_URL_FILE", str(_file(tmp_path, "url", "redis://from-the-file:6379/0")))
    monkeypatch.setenv("CMSBOT_SLACK_APP_TOKEN_FILE", str(_file(tmp_path, "app", "\n")))  # HTTP mode
    assert Settings().redis_url == "redis://from-the-environment:6379/0"
    assert SlackSettings().app_token.get_secret_value() == ""
    monkeypatch.setenv("CMSBOT_REDIS_URL_FILE", str(_file(tmp_path, "url2", "redis://the-other-name:6379/0")))
    monkeypatch.delenv("REDIS_URL")
    monkeypatch.delenv("REDIS_URL_FILE")
    assert Settings().redis_url == "redis://the-other-name:6379/0"


def test_a_secrets_directory_holds_files_named_after_the_variables(tmp_path, monkeypatch):
    directory = tmp_path / "secrets"
    directory.mkdir()
    _file(directory, "redis_url", "redis://cmsbot:pw@redis:6379/0\n")
    _file(directory, "CMSBOT_SLACK_BOT_TOKEN", "xoxb-from-the-directory\n")
    _file(directory, "cmsbot_winrm_password", "from-the-directory")
    monkeypatch.setenv("CMSBOT_SECRETS_DIR", str(directory))
    monkeypatch.setenv("CMSBOT_WINRM_PASSWORD_FILE", str(_file(tmp_path, "winrm", "from-its-file")))
    settings = Settings()
    assert settings.redis_url == "redis://cmsbot:pw@redis:6379/0"
    assert SlackSettings().bot_token.get_secret_value() == "xoxb-from-the-directory"
    assert settings.winrm_password.get_secret_value() == "from-its-file"  # `_FILE` wins over the directory


def test_a_file_that_cannot_be_read_names_the_variable_and_the_path_never_a_value(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("REDIS_URL", "redis://:do-not-show@127.0.0.1:1/0")
    monkeypatch.setenv("CMSBOT_WINRM_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(SettingsError, match="CMSBOT_WINRM_PASSWORD_FILE: cannot read .*missing"):
        Settings()
    assert cli.main(["audit"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cmsbot: configuration error: CMSBOT_WINRM_PASSWORD_FILE: cannot read ")
    assert "do-not-show" not in err
    monkeypatch.delenv("CMSBOT_WINRM_PASSWORD_FILE")
    monkeypatch.setenv("CMSBOT_SECRETS_DIR", str(tmp_path / "no-such-directory"))
    with pytest.raises(SettingsError, match="CMSBOT_SECRETS_DIR: .* is not a directory"):
        SlackSettings()


def test_a_password_file_given_in_code_is_read_too(tmp_path):
    assert Settings(winrm_password_file=_file(tmp_path, "pw", "in-code\n")).winrm_password.get_secret_value() \
        == "in-code"


# -- the Slack manifest and docker-compose.yml ----------------------------------------------------


def test_the_manifest_asks_for_the_fewest_scopes():
    manifest = yaml.safe_load((ROOT / "slack-manifest.yml").read_text(encoding="utf-8"))
    assert manifest["oauth_config"]["scopes"]["bot"] == ["commands", "chat:write", "files:write", "usergroups:read"]


def _compose(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text(encoding="utf-8"))


@pytest.mark.parametrize("files", [["docker-compose.yml"], ["docker-compose.yml", "docker-compose.tls.yml"]])
def test_compose_hands_every_secret_over_as_a_file(files):
    declared = {name for f in files for name in (_compose(f).get("secrets") or {})}
    services: dict[str, dict] = {}
    for f in files:  # an override adds to a service's secrets (Compose merges them by name)
        for name, service in _compose(f)["services"].items():
            merged = services.setdefault(name, {"environment": {}, "secrets": set()})
            merged["environment"].update(service.get("environment") or {})
            merged["secrets"] |= set(service.get("secrets") or [])
    for name, service in services.items():
        env = service["environment"]
        assert not set(env) & set(SECRET_VARIABLES), f"{name}: a secret in the environment"
        assert service["secrets"] <= declared, f"{name}: undeclared secrets {service['secrets'] - declared}"
        for variable, value in env.items():
            if variable.endswith("_FILE") and str(value).startswith("/run/secrets/"):
                assert value.removeprefix("/run/secrets/") in service["secrets"], f"{name}: {variable} not mounted"
    worker, bot = services["worker"]["environment"], services["bot"]["environment"]
    assert worker["REDIS_URL_FILE"] == bot["REDIS_URL_FILE"] == "/run/secrets/redis_url"
    assert worker["CMSBOT_WINRM_PASSWORD_FILE"] == "/run/secrets/winrm_password"
    assert {bot[f"CMSBOT_SLACK_{s.upper()}_FILE"] for s in SECRETS} == {f"/run/secrets/slack_{s}" for s in SECRETS}
    redis = _compose(files[-1])["services"]["redis"]["command"]
    assert redis[redis.index("--aclfile") + 1] == "/run/secrets/redis_acl" and "redis_acl" in services["redis"]["secrets"]
    for f in files:
        for name, secret in (_compose(f).get("secrets") or {}).items():
            assert secret["file"].startswith("${CMSBOT_SECRETS:-./secrets}/"), name


def test_the_compose_secrets_stay_out_of_git_and_the_image():
    assert "secrets/" in (ROOT / ".gitignore").read_text().split()
    assert "secrets/" in (ROOT / ".dockerignore").read_text().split()
