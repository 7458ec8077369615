"""The Slack Web API fake, driven by the real slack_sdk.WebClient."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler, ServerErrorRetryHandler
from slack_sdk.http_retry.builtin_interval_calculators import FixedValueRetryIntervalCalculator

from lab import slack_fake
from lab.slack_fake import SlackFake

fake = pytest.fixture(slack_fake.fixture, name="fake")

BLOCKS = [{"type": "section", "text": {"type": "mrkdwn", "text": "*Replication* in progress"}}]


@pytest.fixture
def client(fake: SlackFake) -> WebClient:
    return WebClient(token="xoxb-test", base_url=fake.base_url, timeout=10, retry_handlers=[
        RateLimitErrorRetryHandler(max_retry_count=2),
        ServerErrorRetryHandler(max_retry_count=2, interval_calculator=FixedValueRetryIntervalCalculator(0.1)),
    ])


def test_base_url_and_auth_test(fake, client):
    assert fake.base_url.startswith("http://127.0.0.1:") and fake.base_url.endswith("/api/")
    r = client.auth_test()
    assert r["team"] == "Contoso" and r["user_id"] == "U0BOT" and r["bot_id"] == "B0001"
    (call,) = fake.calls("auth.test")
    assert call.token == "xoxb-test" and call.status == 200 and call.params == {}


def test_post_update_and_thread_state(fake, client):
    parent = client.chat_postMessage(channel="C1", text="Checking CMS replication", blocks=BLOCKS)
    assert parent["channel"] == "C1" and parent["message"]["blocks"] == BLOCKS
    reply1 = client.chat_postMessage(channel="C1", thread_ts=parent["ts"], text="pool01: up to date")
    reply2 = client.chat_postMessage(channel="C1", thread_ts=parent["ts"], text="pool02: stale")
    other = client.chat_postMessage(channel="C2", text="unrelated")
    assert parent["ts"] < reply1["ts"] < reply2["ts"] < other["ts"]
    assert reply1["message"]["thread_ts"] == parent["ts"]

    up = client.chat_update(channel="C1", ts=parent["ts"], text="1 replica stale")
    assert up["ts"] == parent["ts"] and up["text"] == "1 replica stale"

    (msg,) = [m for m in fake.messages("C1") if m["ts"] == parent["ts"]]
    assert msg["text"] == "1 replica stale" and msg["edits"] == 1 and msg["history"] == ["Checking CMS replication"]
    assert msg["blocks"] == BLOCKS  # kept: the update did not send blocks
    assert [m["text"] for m in fake.thread(parent["ts"])] == ["1 replica stale", "pool01: up to date", "pool02: stale"]
    assert len(fake.messages()) == 4 and len(fake.messages("C2")) == 1

    # the recorded params keep their types, whatever encoding the client chose
    call = fake.calls("chat.postMessage")[0]
    assert call.params["blocks"] == BLOCKS

    with pytest.raises(SlackApiError) as e:
        client.chat_update(channel="C1", ts="1.000000", text="x")
    assert e.value.response["error"] == "message_not_found"


def test_ephemeral_and_conversations_info(fake, client):
    r = client.chat_postEphemeral(channel="C1", user="U42", text="only you")
    assert r["message_ts"] and fake.ephemeral()[0]["user"] == "U42"
    assert client.conversations_info(channel="C1")["channel"]["id"] == "C1"
    (info,) = fake.calls("conversations.info")
    assert info.params == {"channel": "C1"}
    assert client.api_call("reactions.add", params={"name": "eyes"})["ok"] is True


def test_rate_limit_is_retried_after_retry_after(fake, client):
    fake.fail("chat.postMessage", status=429, retry_after=1)
    started = time.monotonic()
    r = client.chat_postMessage(channel="C1", text="after the rate limit")
    waited = time.monotonic() - started
    assert r["ok"]
    first, second = fake.calls("chat.postMessage")
    assert (first.status, first.error) == (429, "ratelimited") and second.status == 200
    # slack_sdk sleeps int(Retry-After) + random() in [0, 1)
    assert 1.0 <= waited < 2.5 and 1.0 <= second.at - first.at < 2.5
    assert [m["text"] for m in fake.messages()] == ["after the rate limit"]


def test_rate_limit_beyond_retries_raises(fake, client):
    fake.fail("chat.update", status=429, retry_after=0, times=5)
    with pytest.raises(SlackApiError) as e:
        client.chat_update(channel="C1", ts="1.0", text="x")
    assert e.value.response.status_code == 429 and e.value.response["error"] == "ratelimited"
    assert len(fake.calls("chat.update")) == 3  # 1 + max_retry_count


def test_server_error_is_retried(fake, client):
    fake.fail("usergroups.users.list", status=500, times=1)
    fake.set_usergroup("S0CMSADMINS", ["U1", "U2"])
    r = client.usergroups_users_list(usergroup="S0CMSADMINS")
    assert r["users"] == ["U1", "U2"]
    assert [c.status for c in fake.calls("usergroups.users.list")] == [500, 200]


def test_ok_false_error_raises(fake, client):
    fake.fail("chat.postMessage", error="channel_not_found", times=1)
    with pytest.raises(SlackApiError) as e:
        client.chat_postMessage(channel="C404", text="lost")
    assert e.value.response["error"] == "channel_not_found"
    (call,) = fake.calls()
    assert (call.status, call.error) == (200, "channel_not_found")
    assert client.chat_postMessage(channel="C1", text="next one is fine")["ok"]  # times=1 used up


def test_files_upload_v2_to_thread(fake, client):
    parent = client.chat_postMessage(channel="C1", text="diagnosis")
    r = client.files_upload_v2(channel="C1", thread_ts=parent["ts"], content="replica,status\npool01,stale\n",
                               filename="replicas.csv", title="CMS replicas")
    assert r["file"]["title"] == "CMS replicas"
    assert [c.method for c in fake.calls()][1:] == ["files.getUploadURLExternal", "upload", "files.completeUploadExternal"]
    (up,) = fake.uploads(thread_ts=parent["ts"])
    assert up["channel"] == "C1" and up["filename"] == "replicas.csv"
    assert up["content"] == b"replica,status\npool01,stale\n"
    complete = fake.calls("files.completeUploadExternal")[0]
    assert complete.params["files"] == [{"id": up["file_id"], "title": "CMS replicas"}]  # JSON-in-form decoded
    assert complete.params["thread_ts"] == parent["ts"]


def test_usergroup_default_empty_and_multipart(fake, client):
    assert client.usergroups_users_list(usergroup="S0NOBODY")["users"] == []
    client.api_call("files.upload", files={"file": b"\x00binary"}, data={"channels": "C1", "filename": "x.bin"})
    (call,) = fake.calls("files.upload")
    assert call.params == {"channels": "C1", "filename": "x.bin", "file": b"\x00binary"}


def test_delay_and_reset(fake, client):
    fake.delay("auth.test", 0.3)
    started = time.monotonic()
    client.auth_test()
    assert time.monotonic() - started >= 0.3
    fake.reset()
    assert fake.calls() == [] and fake.messages() == []


def test_context_manager_stops_server():
    with SlackFake() as f:
        base_url = f.base_url
        WebClient(base_url=base_url).api_call("api.test")
        assert f.calls()[0].token is None
    with pytest.raises(urllib.error.URLError):  # nothing listens there any more
        urllib.request.urlopen(base_url + "api.test", timeout=5)


def test_plain_get_with_query_string(fake):
    with urllib.request.urlopen(fake.base_url + "conversations.info?channel=C9&token=xoxb-q") as resp:
        assert json.load(resp)["channel"]["id"] == "C9"
    (call,) = fake.calls()
    assert call.params == {"channel": "C9"} and call.token == "xoxb-q"


def test_a_private_channel_the_bot_is_not_in_does_not_exist_for_it(fake, client):
    fake.channel("C0PRIV", private=True, member=False)
    for call in (lambda: client.chat_postMessage(channel="C0PRIV", text="hi"),
                 lambda: client.chat_postEphemeral(channel="C0PRIV", user="U1", text="hi"),
                 lambda: client.conversations_info(channel="C0PRIV")):
        with pytest.raises(SlackApiError) as e:
            call()
        assert e.value.response["error"] == "channel_not_found"
    assert fake.messages("C0PRIV") == [] and fake.ephemeral() == []


def test_a_public_channel_the_bot_is_not_in_needs_chat_write_public(fake, client):
    fake.channel("C0PUB", member=False)
    with pytest.raises(SlackApiError) as e:
        client.chat_postMessage(channel="C0PUB", text="hi")
    assert e.value.response["error"] == "not_in_channel"
    assert client.conversations_info(channel="C0PUB")["channel"]["is_member"] is False
    with SlackFake(scopes=slack_fake.DEFAULT_SCOPES | {"chat:write.public"}) as public:
        public.channel("C0PUB", member=False)
        web = WebClient(token="xoxb-test", base_url=public.base_url)
        assert web.chat_postMessage(channel="C0PUB", text="hi")["ok"]
        with pytest.raises(SlackApiError) as e:  # files still need the bot in the channel
            web.files_upload_v2(channel="C0PUB", content="report", filename="r.txt")
        assert e.value.response["error"] == "not_in_channel"


def test_a_response_url_answers_the_user_five_times_within_its_lifetime(fake):
    from slack_sdk.webhook import WebhookClient

    fake.channel("C0PRIV", private=True, member=False)
    url = fake.response_url("C0PRIV", "U42")
    hook = WebhookClient(url)
    for i in range(5):
        assert hook.send(text=f"answer {i}").status_code == 200
    refused = hook.send(text="one too many")
    assert refused.status_code == 404 and json.loads(refused.body)["error"] == "used_url"
    shown = fake.ephemeral()
    assert [(e["channel"], e["user"], e["via"], e["text"]) for e in shown][0] == (
        "C0PRIV", "U42", "response_url", "answer 0")
    assert len(shown) == 5 and fake.messages("C0PRIV") == []
    assert WebhookClient(url + "x").send(text="?").status_code == 404  # not one Slack handed out
    in_channel = WebhookClient(fake.response_url("C0PRIV", "U42"))
    assert in_channel.send(text="for everyone", response_type="in_channel").status_code == 200
    assert [m["text"] for m in fake.messages("C0PRIV")] == ["for everyone"]  # in_channel needs no membership
    with SlackFake(response_url_ttl=0) as short:
        expired = WebhookClient(short.response_url("C1", "U1")).send(text="late")
        assert expired.status_code == 404 and json.loads(expired.body)["error"] == "expired_url"
