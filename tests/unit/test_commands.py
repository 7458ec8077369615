"""What `cmsbot chat` (and the Slack handlers through the same parser) answer to each text."""

from __future__ import annotations

import pytest

from bot import cli
from bot.commands import CommandError, parse
from tests.unit import recorded as R

TOPOLOGY = R.topology_of("healthy")


@pytest.mark.parametrize("text, says", [
    ("/cms-failover pool02.contoso.com", "approval on its card: request it in Slack"),
    ("/cms-recover", "approval on its card: request it in Slack"),
    ("/cms-explain Log Name: Lync Server", "`cmsbot explain FILE`"),
    ("/cms-help", "`cmsbot --help`"),
    ("/cms-reboot", "Unknown command. Commands: `/cms-status [pool|server]`"),
    ("", "Type a command"),
])
def test_each_text_that_cannot_run_here_says_why(text, says):
    with pytest.raises(CommandError) as e:
        parse(text, TOPOLOGY)
    assert says in str(e.value)


def test_status_names_resolve_to_the_topology():
    assert parse("/cms-status POOL02.contoso.com.", TOPOLOGY).args == {"target": "pool02.contoso.com"}
    with pytest.raises(CommandError, match="pool99.contoso.com"):
        parse("/cms-status pool99.contoso.com", TOPOLOGY)


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("cmsbot ")
