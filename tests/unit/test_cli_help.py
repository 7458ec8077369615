"""`cmsbot COMMAND --help`: every subcommand says what it does, which environment variables it reads
(real settings only) and its exit codes; the lab's product and scenarios; and `cmsbot chat` runs or
clearly refuses every Slack command, before it looks for Redis."""

from __future__ import annotations

import argparse
import re

import pytest
from pydantic import AliasChoices

from bot import cli
from bot.commands import HELP
from bot.config import SECRETS, SlackSettings
from bot.delivery.console import EXIT_CANNOT_RUN, refusal
from cms.settings import Settings
from cms.topology import Version
from lab.deployment import SCENARIOS

VARIABLE = re.compile(r"\b(?:REDIS_URL(?:_FILE)?|CMSBOT_[A-Z0-9_]+)\b")


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli._parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def _help(*argv: str, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def _env_names(model: type, prefix: str) -> set[str]:
    names = set()
    for name, field in model.model_fields.items():  # type: ignore[attr-defined]
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {c for c in alias.choices if isinstance(c, str) and c == c.upper()}
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:
            names.add(prefix + name.upper())
    return names


def known_variables() -> set[str]:
    """Every variable the settings read, the `_FILE` of each secret, and the two read outside them."""
    names = _env_names(Settings, "CMSBOT_") | _env_names(SlackSettings, "CMSBOT_SLACK_")
    secrets = {"REDIS_URL", "CMSBOT_REDIS_URL", "CMSBOT_WINRM_PASSWORD", *(f"CMSBOT_SLACK_{s.upper()}" for s in SECRETS)}
    return names | {f"{s}_FILE" for s in secrets} | {"CMSBOT_LOG_LEVEL", "CMSBOT_SECRETS_DIR"}


def test_every_subcommand_describes_itself_its_environment_and_its_exit_codes(capsys):
    known = known_variables()
    for name, sub in _subcommands().items():
        text = _help(name, capsys=capsys)
        assert sub.description and len(sub.description) > 40, f"{name}: no description"
        assert "\nenvironment:\n" in text and "\nexit codes: " in text, f"{name} --help:\n{text}"
        named = set(VARIABLE.findall(text))
        assert named, f"{name} --help names no environment variable"
        assert named <= known, f"{name} --help names variables no setting reads: {sorted(named - known)}"


def test_the_defaults_the_help_states_are_the_settings_defaults(capsys):
    text = " ".join(_help("worker", capsys=capsys).split() + _help("bot", capsys=capsys).split())
    checked = 0
    for variable in cli.ENV:
        default = cli.setting_default(variable)
        m = re.search(rf"{variable} [^()]*\(default ([^;,)]+)", text)
        if not m or isinstance(default, bool) or not isinstance(default, int | float | str):
            continue
        expected = str(default) if isinstance(default, str | int) else f"{default:g}"
        assert m.group(1) == expected, f"{variable}: the help says {m.group(1)}, the setting {expected}"
        checked += 1
    assert checked >= 30


@pytest.mark.parametrize("command, variables", [
    ("bot", ["REDIS_URL", "CMSBOT_NAMESPACE", "CMSBOT_TOPOLOGY", "CMSBOT_SLACK_BOT_TOKEN",
             "CMSBOT_SLACK_BOT_TOKEN_FILE", "CMSBOT_SLACK_SIGNING_SECRET", "CMSBOT_SLACK_APP_TOKEN", "CMSBOT_HTTP_PORT",
             "CMSBOT_SLACK_CHANNELS", "CMSBOT_SLACK_OPERATORS", "CMSBOT_SLACK_APPROVERS", "CMSBOT_SECRETS_DIR"]),
    ("reporter", ["REDIS_URL", "CMSBOT_SLACK_BOT_TOKEN", "CMSBOT_DELIVERY_PATIENCE"]),
    ("worker", ["REDIS_URL", "REDIS_URL_FILE", "CMSBOT_NAMESPACE", "CMSBOT_TOPOLOGY", "CMSBOT_WINRM_USERNAME",
                "CMSBOT_WINRM_PASSWORD", "CMSBOT_WINRM_PASSWORD_FILE", "CMSBOT_WINRM_TRANSPORT", "CMSBOT_HOST_DEADLINE",
                "CMSBOT_ALLOW_VOLATILE_REDIS"]),
    ("chat", ["REDIS_URL", "CMSBOT_NAMESPACE", "CMSBOT_TOPOLOGY", "CMSBOT_CHAT_TIMEOUT"]),
    ("audit", ["REDIS_URL", "CMSBOT_NAMESPACE"]),
    ("demo", ["REDIS_URL"]),
    ("lab", ["CMSBOT_WINRM_USERNAME", "CMSBOT_WINRM_PASSWORD"]),
])
def test_each_help_names_the_variables_that_command_reads(command, variables, capsys):
    named = set(VARIABLE.findall(_help(command, capsys=capsys)))
    assert set(variables) <= named, sorted(set(variables) - named)


@pytest.mark.parametrize("command", ["chat", "demo"])
def test_the_checks_state_their_exit_codes(command, capsys):
    text = " ".join(_help(command, capsys=capsys).split())
    assert "exit codes: 0 healthy, 1 problems found, 2 could not run" in text


def test_the_services_state_theirs(capsys):
    for command in ("bot", "reporter", "worker", "lab"):
        text = " ".join(_help(command, capsys=capsys).split())
        assert re.search(r"exit codes: 0 after a clean stop.*2 could not start", text), command


def test_the_lab_lists_every_scenario_of_its_registry_and_takes_a_product(capsys):
    text = _help("lab", capsys=capsys)
    listed = " ".join(text.split("lab scenarios")[1].split("environment:")[0].split())
    for name in SCENARIOS:
        assert re.search(rf"(^|[ ,]){re.escape(name)}(:|,|$| )", listed), f"scenario {name} not in `lab --help`"
    assert "edge-4443-blocked:<edge>" in listed and "healthy," in listed
    assert "--product {lync2010,lync2013,sfb2015,sfb2019}" in text
    assert "--version" not in text  # the old name is read, not shown
    assert "scenarios" in _help("demo", capsys=capsys)


@pytest.mark.parametrize("argv, product", [
    (["lab"], "sfb2019"),
    (["lab", "--product", "lync2010"], "lync2010"),
    (["lab", "--version", "lync2013"], "lync2013"),  # its old name, for scripts written against it
    (["demo", "--product", "sfb2015"], "sfb2015"),
    (["demo"], "sfb2019"),
])
def test_the_product_version_is_chosen_with_product(argv, product):
    args = cli._parser().parse_args(argv)
    assert args.product == product and Version(args.product)


def test_a_product_that_does_not_exist_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["lab", "--product", "lync2007"])
    assert e.value.code == 2 and "invalid choice: 'lync2007'" in capsys.readouterr().err


# -- `cmsbot chat`: every Slack command runs or is refused, with where it runs ----------------------


@pytest.mark.parametrize("text, says", [
    ("/cms-failover pool02.contoso.com", "`/cms-failover` needs another person's approval on its card: request it in "
                                         "Slack"),
    ("/cms-failover", "request it in Slack"),
    ("/cms-recover", "`/cms-recover` needs another person's approval on its card: request it in Slack"),
    ("/cms-replicate pool01.contoso.com", "`/cms-replicate` changes the deployment and runs only from Slack"),
    ("/CMS-REPLICATE", "`/cms-replicate` changes the deployment and runs only from Slack"),
    ("/cms-explain Log Name: Lync Server", "`/cms-explain` runs without the queue here: `cmsbot explain FILE`"),
    ("/cms-help", "`/cms-help` lists the commands in Slack; here: `cmsbot --help`"),
    ("/cms-reboot now", "Unknown command `/cms-reboot`. The console runs `/cms-status [pool|server]`."),
    ("   ", "Type a command, e.g. `/cms-status`."),
])
def test_chat_refuses_what_does_not_run_here_at_once_without_redis(text, says, capsys, monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there: it is never asked
    assert cli.main(["chat", text]) == EXIT_CANNOT_RUN
    out = capsys.readouterr()
    assert says in out.out and "Redis" not in out.out + out.err
    assert "Unknown command" not in out.out or text.startswith("/cms-reboot")


def test_every_slack_command_has_an_answer_in_the_console():
    runs = [name for name in HELP if refusal(f"{name} pool01.contoso.com") is None]
    assert runs == ["/cms-status"]
    for name in HELP:
        why = refusal(name)
        assert why is None or (f"`{name}`" in why and "Unknown command" not in why), (name, why)
