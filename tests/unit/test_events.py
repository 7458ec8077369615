"""Pasted Event Viewer text -> PastedEvent -> Classified (CMS replication scenarios)."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime
from pathlib import Path

import pydantic
import pytest

from cms.eventlog import (
    EDGE_CERT_INVALID,
    FTA_CODES,
    HTTPS_UNREACHABLE,
    MASTER_WATCH_FAILED,
    SHARE_ACCESS_DENIED,
    CertificateFacts,
    Classified,
    PastedEvent,
    classify,
    parse_pasted,
)

UTC = UTC
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "events"
# the team's shared folder lies beside the checkout (as in CI); a lone clone skips the one check that reads it
SEED = Path(__file__).resolve().parents[3] / "shared" / "seeds" / "cms-replication-failures.md"
FTA = "LS File Transfer Agent Service"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_bytes().decode("utf-8")


def pasted_and_classified(name: str) -> tuple[PastedEvent, Classified]:
    event = parse_pasted(fixture(name))
    return event, classify(event.event_id, event.source, event.description)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# --------------------------------------------------------------------------- the seed, verbatim

@pytest.mark.skipif(not SEED.exists(), reason="seed file not available")
@pytest.mark.parametrize("name", ["seed-1017.txt", "seed-1015.txt", "seed-1034.txt"])
def test_seed_fixtures_are_the_seed_verbatim(name):
    block = fixture(name)
    assert "\u00a0" in block  # the seed pads labels with no-break spaces
    assert block.rstrip("\n") in SEED.read_text(encoding="utf-8")


def test_seed_1017_https_unreachable():
    event, result = pasted_and_classified("seed-1017.txt")
    assert event.log_name == "Lync Server"
    assert event.source == FTA
    assert event.event_id == 1017
    assert event.task_category == "(1121)"
    assert event.level == "Error"
    assert event.computer == "server01.contoso.net"
    assert event.date_text == "dd/mm/yyyy hh:mm:ss AM|PM"
    assert event.time is None and event.date_ambiguous is False
    assert event.description.startswith("File transfer failed for some replica machines.")
    assert event.description.endswith("https web services listed above.")
    assert result == Classified(code=HTTPS_UNREACHABLE, replicas=["sever05.contoso.com"], paths=[])


def test_seed_1015_edge_cert_invalid():
    event, result = pasted_and_classified("seed-1015.txt")
    assert (event.event_id, event.source, event.computer) == (1015, FTA, "server01.contoso.com")
    assert event.date_text == "dd/mm/yyyy hh:mm:ss"
    assert event.time is None and event.date_ambiguous is False
    assert result.code == EDGE_CERT_INVALID
    assert result.replicas == ["server05.contoso.com"]
    assert result.paths == []
    assert result.certificate == CertificateFacts(
        host="server05.contoso.com",
        cluster="server05.contoso.com",
        subject="CNn=server05.contoso.com, OU=Certificates, OU=Server, O=<Organization name>",
        subject_cn="server05.contoso.com",
    )


def test_seed_1034_share_access_denied():
    event, result = pasted_and_classified("seed-1034.txt")
    assert (event.event_id, event.source, event.level) == (1034, FTA, "Error")
    assert event.time is None and event.date_ambiguous is False
    assert event.description.endswith("see the product documentation")
    assert result.code == SHARE_ACCESS_DENIED
    assert result.replicas == ["server02.contoso.com"]
    assert result.paths == [r"\\server02.contoso.com\xds-replica\from-master\data.zip"]
    assert result.certificate is None


@pytest.mark.parametrize("name, code", [
    ("seed-1017.txt", HTTPS_UNREACHABLE), ("seed-1015.txt", EDGE_CERT_INVALID), ("seed-1034.txt", SHARE_ACCESS_DENIED),
])
def test_seed_descriptions_classify_without_id_or_source(name, code):
    event = parse_pasted(fixture(name))
    assert classify(None, None, event.description).code == code
    assert classify(None, None, fixture(name)).code == code  # the whole paste as the message works too


# --------------------------------------------------------------------------- variants

def test_sfb_two_edges_crlf_fenced():
    event, result = pasted_and_classified("sfb-1017-two-edges-crlf.txt")
    assert (event.log_name, event.source, event.event_id, event.computer) == (
        "Lync Server", FTA, 1017, "fe01.fabrikam.local")
    assert event.date_text == "13/03/2024 2:05:09 PM"
    assert event.time == utc(2024, 3, 13, 14, 5, 9)
    assert event.date_ambiguous is False
    assert "\r" not in event.description and "```" not in event.description
    assert event.description.startswith("File transfer failed") and event.description.endswith("listed above.")
    assert result.code == HTTPS_UNREACHABLE
    assert result.replicas == ["edge01.fabrikam.local", "edge02.fabrikam.local"]


@pytest.mark.parametrize("name", ["seed-1017.txt", "seed-1015.txt", "seed-1034.txt"])
@pytest.mark.parametrize("wrap", [
    lambda t: t.replace("\n", "\r\n"),
    lambda t: "\n\n```AsciiDoc\n" + t + "```\n\n",
    lambda t: "\r\n```\r\n" + t.replace("\n", "\r\n") + "```\r\n  \r\n",
    lambda t: "```" + t.rstrip("\n") + "```",  # Slack: fences run into the first and last lines
    lambda t: "Got this on the FE overnight:\n```text\n" + t + "```\nany idea? Description: none",
    lambda t: "```\n" + t,  # never closed
], ids=["crlf", "asciidoc-fence", "crlf-fence", "inline-fence", "chat-around-fence", "unclosed-fence"])
def test_wrapping_does_not_change_the_reading(name, wrap):
    plain = parse_pasted(fixture(name))
    wrapped = parse_pasted(wrap(fixture(name)))
    assert wrapped == plain
    assert classify(wrapped.event_id, wrapped.source, wrapped.description) == \
        classify(plain.event_id, plain.source, plain.description)


@pytest.mark.parametrize("name", ["seed-1017.txt", "seed-1015.txt", "seed-1034.txt"])
def test_indented_paste(name):
    plain = parse_pasted(fixture(name))
    indented = parse_pasted("\n".join("\t  " + line + "  " for line in fixture(name).split("\n")))
    assert indented.model_copy(update={"description": plain.description}) == plain
    assert " ".join(indented.description.split()) == " ".join(plain.description.split())
    assert classify(indented.event_id, indented.source, indented.description) == \
        classify(plain.event_id, plain.source, plain.description)


def test_mixed_reasons_only_https_replicas_count():
    event, result = pasted_and_classified("lync-1017-mixed-reasons.txt")
    assert event.date_text == "03/13/2024 11:47:02 PM"
    assert event.time == utc(2024, 3, 13, 23, 47, 2)
    assert event.date_ambiguous is False
    assert event.computer == "lyncfe01.corp.example.org"
    assert result.code == HTTPS_UNREACHABLE
    assert result.replicas == ["edge01.corp.example.org", "edge03.corp.example.org"]


def test_other_reasons_only_is_not_https_unreachable_but_names_the_replicas():
    text = ("Replica file transfer failures: edge01.contoso.com: Replica machine is not reachable. "
            "edge02.contoso.com: Some other failure.")
    result = classify(1017, FTA, text)
    assert result.code is None
    assert result.replicas == ["edge01.contoso.com", "edge02.contoso.com"]


@pytest.mark.parametrize("listing", [
    "edge01.contoso.com: Https destination unavailable. edge02.contoso.com: Https destination unavailable.",
    "edge01.contoso.com: Https destination unavailable, edge02.contoso.com: Https destination unavailable",
    "edge01.contoso.com: Https destination unavailable; edge02.contoso.com: Https destination unavailable;",
    "\nedge01.contoso.com: Https destination unavailable.\r\nedge02.contoso.com: Https destination unavailable.\r\n",
    "edge01.contoso.com:Https destination unavailable. edge02.contoso.com:HTTPS DESTINATION UNAVAILABLE.",
    "  Edge01.Contoso.com :  Https\n destination   unavailable.  edge02.contoso.com: Https destination unavailable."
    " edge01.contoso.com: Https destination unavailable.",
])
def test_several_replicas_in_one_1017(listing):
    text = ("File transfer failed for some replica machines. Lync Server, File Transfer Agent will continuously "
            "attempt to replicate to these machines.\n\nReplica file transfer failures: " + listing +
            "\n\nCause: Possible issues with transferring files to the replicas listed above.")
    result = classify(1017, FTA, text)
    assert result.code == HTTPS_UNREACHABLE
    assert result.replicas == ["edge01.contoso.com", "edge02.contoso.com"]


def test_urls_ports_and_file_names_are_not_replicas():
    text = ("Replica file transfer failures: edge01.contoso.com: Https destination unavailable "
            "(https://edge09.contoso.com:4443/ReplicationWebService), data.zip: x, 10.0.0.5: y, "
            "setup.exe, edge02.contoso.local: Https destination unavailable.")
    result = classify(None, None, text)
    assert result.code == HTTPS_UNREACHABLE
    assert result.replicas == ["edge01.contoso.com", "edge02.contoso.local"]


def test_sfb_1015_host_and_cluster_differ():
    event, result = pasted_and_classified("sfb-1015-edge-cert.txt")
    assert event.date_text == "2024-03-12T14:05:09+01:00"
    assert event.time == utc(2024, 3, 12, 13, 5, 9)
    assert event.date_ambiguous is False
    assert result.code == EDGE_CERT_INVALID
    assert result.replicas == ["edge01.fabrikam.local", "edgepool.fabrikam.local"]
    assert result.certificate == CertificateFacts(
        host="Edge01.fabrikam.local", cluster="edgepool.fabrikam.local",
        subject="CN=edge01-int.fabrikam.local, OU=IT, O=Fabrikam, L=Oslo, C=NO",
        subject_cn="edge01-int.fabrikam.local")


def test_1015_wrapped_and_spaced():
    text = ("File transfer failed.\r\n\r\nReason: Unable to match  host / cluster against\r\ncertificate, "
            "host=edge02.contoso.com,\r\n cluster=edge02.contoso.com, CN=wrong.contoso.com,\r\nO=Contoso.\r\n\r\n"
            "Cause: Replica Replicator Agent presented an invalid certificate.")
    result = classify(1015, "ls file transfer agent service", text)
    assert result.code == EDGE_CERT_INVALID
    assert result.replicas == ["edge02.contoso.com"]
    assert result.certificate.subject == "CN=wrong.contoso.com, O=Contoso"
    assert result.certificate.subject_cn == "wrong.contoso.com"


def test_1034_two_paths():
    event, result = pasted_and_classified("lync-1034-two-paths.txt")
    assert event.date_text == "2024-03-12 14:05:09"
    assert event.time == utc(2024, 3, 12, 14, 5, 9)
    assert event.date_ambiguous is False
    assert event.computer == "pool01fe1.contoso.com"
    assert result.code == SHARE_ACCESS_DENIED
    assert result.replicas == ["dir01.contoso.com", "med01.contoso.com"]
    assert result.paths == [r"\\dir01.contoso.com\xds-replica\from-master\data.zip",
                            r"\\MED01.contoso.com\xds-replica\from-master\data.zip"]


@pytest.mark.parametrize("text", [
    r"Access denied. (\\a01.contoso.com\xds-replica\from-master\data.zip, \\b01.contoso.com\xds-replica\x.zip)",
    r"Access is denied. \\a01.contoso.com\xds-replica\from-master\data.zip; \\b01.contoso.com\xds-replica\x.zip.",
    "Access denied. (\\\\a01.contoso.com\\xds-replica\\from-master\\data.zip)\r\n"
    "Access denied. (\\\\b01.contoso.com\\xds-replica\\x.zip)\r\n",
])
def test_1034_path_layouts(text):
    result = classify(1034, FTA, text)
    assert result.code == SHARE_ACCESS_DENIED
    assert result.replicas == ["a01.contoso.com", "b01.contoso.com"]
    assert result.paths == [r"\\a01.contoso.com\xds-replica\from-master\data.zip", r"\\b01.contoso.com\xds-replica\x.zip"]


def test_1034_on_a_share_that_is_not_a_replica_share_is_not_guessed():
    text = r"Access denied. (\\fs01.contoso.com\LyncShare\1-CentralMgmt-1\CMSFileStore\xds-master\data.zip)"
    result = classify(1034, FTA, text)
    assert result.code is None
    assert result.replicas == []
    assert result.paths == [r"\\fs01.contoso.com\LyncShare\1-CentralMgmt-1\CMSFileStore\xds-master\data.zip"]


def test_1034_without_access_denied_is_not_guessed():
    text = r"The network path was not found. (\\server02.contoso.com\xds-replica\from-master\data.zip)"
    result = classify(1034, FTA, text)
    assert result.code is None
    assert result.replicas == ["server02.contoso.com"]


def test_description_only_paste():
    event, result = pasted_and_classified("description-only-1034.txt")
    assert (event.log_name, event.source, event.event_id, event.computer, event.date_text) == (None,) * 5
    assert event.time is None
    assert event.description.startswith("Microsoft Lync Server, File Transfer Agent service")
    assert event.description.endswith("see the product documentation")
    assert result.code == SHARE_ACCESS_DENIED
    assert result.replicas == ["server07.contoso.com"]


def test_description_with_one_label_like_line_stays_whole():
    text = "Something happened.\nUser: sip:alice@contoso.com\nMore text."
    event = parse_pasted(text)
    assert event.description == text
    assert event.source is None


def test_event_xml_section_is_not_description_and_gives_the_utc_instant():
    event, result = pasted_and_classified("lync-1017-with-event-xml.txt")
    assert event.description.endswith("https web services listed above.")
    assert "<Event" not in event.description
    assert event.date_text == "3/12/2024 3:05:09 PM"
    assert event.time == datetime(2024, 3, 12, 14, 5, 9, 123456, tzinfo=UTC)
    assert event.date_ambiguous is False
    assert result.code == HTTPS_UNREACHABLE
    assert result.replicas == ["edge01.contoso.com"]


def test_event_xml_alone_fills_fields():
    xml = fixture("lync-1017-with-event-xml.txt").split("Event Xml:\n", 1)[1]
    event = parse_pasted(xml)
    assert (event.log_name, event.source, event.event_id, event.computer) == (
        "Lync Server", FTA, 1017, "fe01.contoso.com")
    assert event.time == datetime(2024, 3, 12, 14, 5, 9, 123456, tzinfo=UTC)
    assert event.description == xml.strip()
    # The XML carries only the insertion strings, not the "Replica file transfer failures:" sentence.
    assert classify(event.event_id, event.source, event.description).code is None


def test_slack_inline_headers_and_links():
    # Slack may deliver the paste on one fenced line, and linkifies host names outside code blocks.
    text = ("```Log Name: Lync Server Source: LS File Transfer Agent Service Date: 2024-03-12 14:05:09 "
            "Event ID: 1017 Task Category: (1121) Level: Error Keywords: Classic User: N/A "
            "Computer: <http://fe01.contoso.com|fe01.contoso.com> Description: File transfer failed for some replica "
            "machines. Replica file transfer failures: <http://edge01.contoso.com|edge01.contoso.com>: Https "
            "destination unavailable. Cause: Possible issues.```")
    event = parse_pasted(text)
    assert (event.log_name, event.source, event.event_id, event.task_category, event.level, event.computer) == (
        "Lync Server", FTA, 1017, "(1121)", "Error", "fe01.contoso.com")
    assert event.time == utc(2024, 3, 12, 14, 5, 9)
    assert event.description.startswith("File transfer failed") and event.description.endswith("Cause: Possible issues.")
    result = classify(event.event_id, event.source, event.description)
    assert result == Classified(code=HTTPS_UNREACHABLE, replicas=["edge01.contoso.com"])


@pytest.mark.parametrize("product", ["Microsoft Lync Server", "Lync Server", "Skype for Business Server"])
def test_product_wording(product):
    for name in ("seed-1017.txt", "seed-1015.txt", "seed-1034.txt"):
        text = fixture(name).replace("Microsoft Lync Server", product)
        event = parse_pasted(text)
        assert classify(event.event_id, event.source, event.description).code is not None


# --------------------------------------------------------------------------- real-shaped corpus (issue 16, item 7)

MRA = "LS Master Replicator Agent Service"
TWO_EDGES = ["edge01.contoso.com", "edge02.contoso.com"]
EDGE_CERTS = ["edge01.contoso.com", "edgepool.contoso.com", "edge02.contoso.com"]
TWO_SHARES = [r"\\fe03.contoso.com\xds-replica\from-master\data.zip", r"\\med01.contoso.com\xds-replica\from-master\data.zip"]
MASTER_PATHS = [
    r"\\filesharehost.contoso.com\LyncPool01\1-CentralMgmt-1\CMSFileStore\xds-master\replicas\lyncfe01.contoso.com"
    r"\from-replica",
    r"\\filesharehost.contoso.com\LncPool01\1-CentralMgmt-1\CMSFileStore\xds-master\replicas\lyncfe05.contoso.com"
    r"\from-replica",  # "LncPool01": the Microsoft article's own typo, kept
]
MASTER_REPLICAS = ["lyncfe01.contoso.com", "lyncfe05.contoso.com"]
CERTS = [
    CertificateFacts(host="edge01.contoso.com", cluster="edgepool.contoso.com",
                     subject="CN=edge01.contoso.com, OU=IT, O=Contoso", subject_cn="edge01.contoso.com"),
    CertificateFacts(host="edge02.contoso.com", cluster="edgepool.contoso.com",
                     subject="CN=edge02.contoso.com, OU=IT, O=Contoso", subject_cn="edge02.contoso.com"),
]

# file -> (event id and source read from it, code, replicas, paths)
CORPUS = {
    "fta-1017-two-edges-concatenated.txt": (1017, FTA, HTTPS_UNREACHABLE, TWO_EDGES, []),
    "fta-1017-two-edges-wrap60-lf.txt": (1017, FTA, HTTPS_UNREACHABLE, TWO_EDGES, []),
    "fta-1017-two-edges-wrap60-crlf-eventxml.txt": (1017, FTA, HTTPS_UNREACHABLE, TWO_EDGES, []),
    "fta-1017-two-edges-wrap90-crlf-nohdr.txt": (None, None, HTTPS_UNREACHABLE, TWO_EDGES, []),
    "fta-1034-two-paths-concatenated.txt": (1034, FTA, SHARE_ACCESS_DENIED, ["fe03.contoso.com", "med01.contoso.com"],
                                            TWO_SHARES),
    "fta-1034-two-paths-wrap80-crlf.txt": (1034, FTA, SHARE_ACCESS_DENIED, ["fe03.contoso.com", "med01.contoso.com"],
                                           TWO_SHARES),
    "fta-1034-two-paths-wrap60-nohdr.txt": (None, None, SHARE_ACCESS_DENIED, ["fe03.contoso.com", "med01.contoso.com"],
                                            TWO_SHARES),
    "fta-1015-two-edges-concatenated.txt": (1015, FTA, EDGE_CERT_INVALID, EDGE_CERTS, []),
    "fta-1015-two-edges-wrap60-lf.txt": (1015, FTA, EDGE_CERT_INVALID, EDGE_CERTS, []),
    "fta-1015-two-edges-wrap80-crlf-nohdr.txt": (None, None, EDGE_CERT_INVALID, EDGE_CERTS, []),
    "ms-article-mra-2020.txt": (2020, MRA, MASTER_WATCH_FAILED, MASTER_REPLICAS, MASTER_PATHS),
    "mra-2020-wrap80-crlf.txt": (2020, MRA, MASTER_WATCH_FAILED, MASTER_REPLICAS, MASTER_PATHS),
    "mra-2020-wrap60-nohdr.txt": (None, None, MASTER_WATCH_FAILED, MASTER_REPLICAS, MASTER_PATHS),
}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_reads_every_replica_and_path(name):
    event_id, source, code, replicas, paths = CORPUS[name]
    event, result = pasted_and_classified(name)
    assert (event.event_id, event.source) == (event_id, source)
    assert result.code == code
    assert result.replicas == replicas
    assert result.paths == paths
    if code == EDGE_CERT_INVALID:
        assert result.certificates == CERTS and result.certificate == CERTS[0]
    # the description alone, without id or source, reads the same
    assert classify(None, None, event.description) == result


@pytest.mark.parametrize("name", sorted(CORPUS))
@pytest.mark.parametrize("eol", ["\n", "\r\n"])
def test_corpus_line_ends_do_not_matter(name, eol):
    text = fixture(name).replace("\r\n", "\n").replace("\n", eol)
    event = parse_pasted(text)
    assert classify(event.event_id, event.source, event.description) == pasted_and_classified(name)[1]


def test_corpus_files_are_what_their_names_say():
    for name in CORPUS:
        raw = fixture(name)
        assert ("\r\n" in raw) == ("crlf" in name), name
        assert raw.startswith("Log Name:") == ("nohdr" not in name), name
        assert ("Event Xml:" in raw) == ("eventxml" in name), name
        if "wrap" in name:
            width = int(name.split("wrap")[1][:2])
            lengths = [len(line) for line in raw.replace("\r\n", "\n").split("\n")]
            assert max(lengths) == width and lengths.count(width) >= 2, name


@pytest.mark.parametrize("name, inside", [
    ("fta-1015-two-edges-wrap60-lf.txt", "CN=edge\n01.contoso.com"),
    ("fta-1015-two-edges-wrap80-crlf-nohdr.txt", "host=edge01.contoso.co\r\nm,"),
    ("fta-1017-two-edges-wrap90-crlf-nohdr.txt", "edge02.c\r\nontoso.com"),
    ("fta-1034-two-paths-wrap60-nohdr.txt", "\\from-master\\d\nata.zip"),
    ("mra-2020-wrap60-nohdr.txt", "\\\\fileshar\nehost.contoso.com"),
    ("mra-2020-wrap80-crlf.txt", "\\Ly\r\nncPool01"),
    ("ms-article-mra-2020.txt", "\\replicas\n\\lyncfe01"),     # Microsoft's own word wrap, before a backslash
    ("ms-article-mra-2020.txt", "CentralMgmt-\n1\\CMSFileStore"),  # and after a hyphen
])
def test_corpus_breaks_fall_inside_names_and_paths(name, inside):
    assert inside in fixture(name)


def test_ms_article_mra_event_verbatim_fields():
    event, result = pasted_and_classified("ms-article-mra-2020.txt")
    assert (event.log_name, event.task_category, event.level, event.computer) == (
        "Lync Server", MRA, "Error", "lyncfe01.contoso.com")
    assert event.date_text == "2/9/2015 9:24:07 PM" and event.date_ambiguous is True
    assert "from-replica.)lyncfe05.contoso.com: Access failed." in event.description  # Windows' glue, as published
    assert result.code == MASTER_WATCH_FAILED


def test_wrapped_event_xml_still_gives_the_utc_instant():
    event = parse_pasted(fixture("fta-1017-two-edges-wrap60-crlf-eventxml.txt"))
    raw = fixture("fta-1017-two-edges-wrap60-crlf-eventxml.txt")
    assert '418275300Z"\r\n />' in raw and 'event\r\ns/event">' in raw  # the 60-column wrap cuts the XML too
    assert event.time == datetime(2024, 3, 14, 8, 12, 44, 418275, tzinfo=UTC) and not event.date_ambiguous
    assert "<Event" not in event.description


@pytest.mark.parametrize("glued, replicas", [
    ("edge01.contoso.com: Https destination unavailable.edge02.contoso.com: Https destination unavailable.", TWO_EDGES),
    ("edge01.contoso.com: Https destination unavailable.edge02.contoso.com: Https destination unavailable."
     "edge03.contoso.com: Https destination unavailable.", [*TWO_EDGES, "edge03.contoso.com"]),
    ("EDGE01.contoso.com: HTTPS destination unavailable.Edge02.Contoso.com: Https destination unavailable.", TWO_EDGES),
    ("edge01.contoso.com: Https destination\nunavailable.edge02.contoso.com: Https destination unavailable.", TWO_EDGES),
    # another reason glued in front: only the Https one counts, and its host is not "reachable.edge02..."
    ("edge01.contoso.com: Replica machine is not reachable.edge02.contoso.com: Https destination unavailable.",
     ["edge02.contoso.com"]),
])
def test_concatenated_1017_entries(glued, replicas):
    result = classify(1017, FTA, "Replica file transfer failures: " + glued + "\n\nCause: x")
    assert result.code == HTTPS_UNREACHABLE
    assert result.replicas == replicas


def test_concatenated_1017_names_every_replica_seen_even_with_other_reasons():
    text = ("Replica file transfer failures: edge01.contoso.com: Replica machine is not reachable."
            "edge02.contoso.com: Some other failure.")
    result = classify(1017, FTA, text)
    assert result.code is None
    assert result.replicas == TWO_EDGES


@pytest.mark.parametrize("text", [
    "Access denied. (\\\\fe03.contoso.com\\xds-replica\\from-master\\data.zip)Access denied. "
    "(\\\\med01.contoso.com\\xds-replica\\from-master\\data.zip)",
    "Access denied. (\\\\fe03.contoso.com\\xds-replica\\from-master\\data.zip"
    "\\\\med01.contoso.com\\xds-replica\\from-master\\data.zip)",  # two paths with nothing between them
    "Access denied. (\\\\fe03.contoso.com\\xds-replica\\from-ma\r\nster\\data.zip)\r\nAccess denied. (\r\n"
    "\\\\med01.contoso.com\\xds-replica\\from-master\\\ndata.zip)",  # word-wrapped inside and around the paths
])
def test_concatenated_and_wrapped_1034_paths(text):
    result = classify(1034, FTA, text)
    assert result.code == SHARE_ACCESS_DENIED
    assert result.replicas == ["fe03.contoso.com", "med01.contoso.com"]
    assert result.paths == TWO_SHARES


@pytest.mark.parametrize("width", range(40, 131, 7))
@pytest.mark.parametrize("name", ["fta-1017-two-edges-concatenated.txt", "fta-1034-two-paths-concatenated.txt",
                                  "fta-1015-two-edges-concatenated.txt", "ms-article-mra-2020.txt"])
def test_any_fixed_width_wrap_reads_the_same(name, width):
    plain = pasted_and_classified(name)
    text = plain[0].description
    if name.startswith("ms-"):  # undo the article's own word wrap first
        text = text.replace("these \nmachines", "these machines").replace("replicas\n\\", "replicas\\").replace(
            "CentralMgmt-\n1", "CentralMgmt-1")
    wrapped = "\n".join(chunk for line in text.split("\n")
                        for chunk in ([line[i:i + width] for i in range(0, len(line), width)] or [""]))
    assert classify(plain[0].event_id, plain[0].source, wrapped) == plain[1]


@pytest.mark.parametrize("text, replicas", [
    # two hosts on consecutive lines are never glued into one
    ("Replica file transfer failures:\nedge01.contoso.com\nedge02.contoso.com: Https destination unavailable.",
     ["edge02.contoso.com"]),
    # a word and a host on consecutive lines are not glued without a fixed-width wrap
    ("Replica file transfer failures:\nedge01.contoso.com: Https destination unavailable\n"
     "edge02.contoso.com: Https destination unavailable", TWO_EDGES),
    ("Replica file transfer failures:\nedge01.contoso.com: Https destination unavailable.\n"
     "edge02.contoso.com: Https destination unavailable.", TWO_EDGES),
    # a sentence end and a host on the next line are not glued either
    ("Replica file transfer failures: edge01.contoso.com: Https destination unavailable.\n"
     "edge02.contoso.com: Https destination unavailable.", TWO_EDGES),
])
def test_line_breaks_never_make_a_fake_host(text, replicas):
    result = classify(1017, FTA, text)
    assert result.code == HTTPS_UNREACHABLE
    assert result.replicas == replicas
    assert set(classify(None, None, text).replicas) <= set(TWO_EDGES)


def test_equal_short_lines_are_not_a_fixed_width_wrap():
    # three list lines of the same length: a coincidence, not a wrap (and the known reason ends each)
    text = ("Replica file transfer failures:\nedge01.contoso.com: Https destination unavailable\n"
            "edge02.contoso.com: Https destination unavailable\nedge03.contoso.com: Https destination unavailable\n")
    assert classify(1017, FTA, text).replicas == [*TWO_EDGES, "edge03.contoso.com"]


# --- the Master Replicator Agent's own events

@pytest.mark.parametrize("name", ["ms-article-mra-2020.txt", "mra-2020-wrap80-crlf.txt", "mra-2020-wrap60-nohdr.txt"])
@pytest.mark.parametrize("event_id", [None, 2020, 1017, 1015, 1034, 2010])
@pytest.mark.parametrize("source", [None, MRA, FTA, "  ls MASTER replicator  agent service "])
def test_master_replicator_events_never_get_an_fta_code(name, event_id, source):
    event = parse_pasted(fixture(name))
    result = classify(event_id, source, event.description)
    assert result.code not in FTA_CODES
    mra_ok = source is None or "master" in source.lower()
    assert (result.code == MASTER_WATCH_FAILED) == (mra_ok and event_id in (None, 2020))
    assert result.replicas == MASTER_REPLICAS and result.paths == MASTER_PATHS


@pytest.mark.parametrize("name", ["seed-1017.txt", "seed-1015.txt", "seed-1034.txt", "fta-1017-two-edges-concatenated.txt",
                                  "fta-1034-two-paths-concatenated.txt"])
def test_fta_texts_with_the_master_replicator_source_are_not_classified(name):
    event = parse_pasted(fixture(name))
    assert classify(event.event_id, MRA, event.description).code is None
    assert classify(2020, MRA, event.description).code is None


@pytest.mark.parametrize("text", [
    # an xds-master path without "Can't watch" or the Master Replicator's wording
    r"Access denied. (\\fs01.contoso.com\LyncShare\1-CentralMgmt-1\CMSFileStore\xds-master\data.zip)",
    # "Can't watch" a folder that is not under xds-master
    r"lyncfe01.contoso.com: Access failed. (Can't watch \\fs01.contoso.com\LyncShare\1-WebServices-1\ABFiles.)",
])
def test_master_replicator_signature_needs_both_parts(text):
    assert classify(None, None, text).code is None


@pytest.mark.parametrize("name", ["ms-article-backup-4042.txt", "ls-user-services-32178.txt"])
def test_other_real_events_with_unc_paths_are_not_a_signature(name):
    event, result = pasted_and_classified(name)
    assert result.code is None
    assert classify(None, None, event.description).code is None
    assert classify(None, None, fixture(name)).code is None
    if name.startswith("ms-"):
        assert event.event_id == 4042 and len(result.paths) == 3 and result.replicas == []


# --------------------------------------------------------------------------- dates

@pytest.mark.parametrize("date_text, expected, ambiguous", [
    ("13/03/2024 2:05:09 PM", utc(2024, 3, 13, 14, 5, 9), False),        # dd/mm, the 13 decides
    ("03/13/2024 2:05:09 PM", utc(2024, 3, 13, 14, 5, 9), False),        # mm/dd, the 13 decides
    ("04/03/2024 02:05:09 AM", utc(2024, 3, 4, 2, 5, 9), True),          # both <= 12: read as dd/mm
    ("4/3/2024 12:05:09 AM", utc(2024, 3, 4, 0, 5, 9), True),
    ("12/03/2024 12:30:00 PM", utc(2024, 3, 12, 12, 30, 0), True),
    ("05/05/2024 9:00:00 PM", utc(2024, 5, 5, 21, 0, 0), False),         # same either way
    ("25/12/2023 23:59:59", utc(2023, 12, 25, 23, 59, 59), False),       # 24-hour dd/mm
    ("01/02/2024 00:00:01", utc(2024, 2, 1, 0, 0, 1), True),
    ("2024-03-12 14:05:09", utc(2024, 3, 12, 14, 5, 9), False),
    ("2024-03-12T14:05:09Z", utc(2024, 3, 12, 14, 5, 9), False),
    ("2024-03-12T14:05:09+01:00", utc(2024, 3, 12, 13, 5, 9), False),
    ("2024-03-12T23:30:00-05:30", utc(2024, 3, 13, 5, 0, 0), False),
    ("2024-03-12T14:05:09.1234567Z", datetime(2024, 3, 12, 14, 5, 9, 123456, tzinfo=UTC), False),
    ("\u200e12/\u200e03/\u200e2024 14:05:09", utc(2024, 3, 12, 14, 5, 9), True),  # Windows LRM marks
    ("3/13/2024 2:05:09\u202fPM", utc(2024, 3, 13, 14, 5, 9), False),             # narrow no-break space
    ("13.03.2024 14:05:09", utc(2024, 3, 13, 14, 5, 9), False),
    ("Tuesday, March 12, 2024 2:05:09 PM", utc(2024, 3, 12, 14, 5, 9), False),
    ("dd/mm/yyyy hh:mm:ss AM|PM", None, False),                          # the seed's placeholder
    ("dd/mm/yyyy hh:mm:ss", None, False),
    ("31/02/2024 10:00:00", None, False),
    ("13/13/2024 10:00:00", None, False),
    ("13/03/2024 13:05:09 PM", None, False),
    ("2024-03-12T14:05:09+25:00", None, False),
    ("yesterday", None, False),
])
def test_dates(date_text, expected, ambiguous):
    event = parse_pasted(f"Log Name: Lync Server\nDate:   {date_text}\nEvent ID: 1017\nDescription:\nx\n")
    # as pasted, but with its spacing collapsed and invisible marks (LRM) dropped
    assert event.date_text == " ".join(date_text.replace("\u200e", "").split())
    assert event.time == expected
    assert event.date_ambiguous is ambiguous
    if expected is not None:
        assert event.time.utcoffset().total_seconds() == 0


# --------------------------------------------------------------------------- negatives

def test_1017_text_with_another_event_id_is_not_classified():
    event = parse_pasted(fixture("seed-1017.txt"))
    result = classify(1018, event.source, event.description)
    assert result.code is None
    assert result.replicas == ["sever05.contoso.com"]  # still what the text names


@pytest.mark.parametrize("name, other_id", [("seed-1015.txt", 1017), ("seed-1034.txt", 1015), ("seed-1017.txt", 1034)])
def test_seed_texts_with_each_others_ids(name, other_id):
    event = parse_pasted(fixture(name))
    result = classify(other_id, event.source, event.description)
    assert result.code is None
    assert result.replicas == classify(event.event_id, event.source, event.description).replicas


@pytest.mark.parametrize("source", ["LS User Services", "LS Replica Replicator Agent Service", "FTA"])
def test_right_id_other_source_is_not_classified(source):
    event = parse_pasted(fixture("seed-1034.txt"))
    result = classify(1034, source, event.description)
    assert result.code is None
    assert result.paths == [r"\\server02.contoso.com\xds-replica\from-master\data.zip"]
    assert result.replicas == ["server02.contoso.com"]


def test_source_comparison_ignores_case_and_spacing():
    event = parse_pasted(fixture("seed-1017.txt"))
    assert classify(1017, "  ls file  TRANSFER agent service ", event.description).code == HTTPS_UNREACHABLE


def test_unrelated_lync_event():
    event, result = pasted_and_classified("ls-user-services-32178.txt")
    assert (event.log_name, event.source, event.event_id, event.task_category, event.level, event.computer) == (
        "Lync Server", "LS User Services", 32178, "(1006)", "Error", "fe02.contoso.com")
    assert event.time == utc(2023, 12, 25, 23, 59, 59)
    assert event.date_ambiguous is False
    assert event.description.startswith("Failed to sync data for Routing group")
    assert result == Classified(code=None, replicas=[], paths=[], certificate=None)
    assert classify(None, None, event.description).code is None


def test_two_scenarios_in_one_text_without_an_id_is_not_guessed():
    text = parse_pasted(fixture("seed-1017.txt")).description + "\n" + parse_pasted(fixture("seed-1034.txt")).description
    assert classify(None, None, text).code is None
    assert classify(None, None, text).replicas == ["sever05.contoso.com", "server02.contoso.com"]
    assert classify(1034, FTA, text).code == SHARE_ACCESS_DENIED
    assert classify(1017, FTA, text).code == HTTPS_UNREACHABLE


def test_empty_string():
    event = parse_pasted("")
    assert event == PastedEvent(log_name=None, source=None, event_id=None, task_category=None, level=None,
                                computer=None, date_text=None, time=None, date_ambiguous=False, description="")
    assert classify(None, None, "") == Classified(code=None)


@pytest.mark.parametrize("text", [
    "\x00\x01\x02Log Name:\x07 Lync\x1b[31m Server\x7f\nEvent ID: \x00 1017\nDescription:\n\x08\x0c",
    "Event ID: 99999999999999999999999999\nSource: x\nDescription:",
    "Event ID: " + "9" * 5000 + "\nLevel: x\n",
    "Description:",
    "```",
    "```AsciiDoc\n```",
    "\ufeff\u200e\u200f\u2028\u2029\x85",
    "Date: " + "1" * 100 + "\nLevel: Error",
    "Unable to match host/cluster against certificate",
    "Unable to match host/cluster against certificate, host=, cluster=,,, CN=",
    "Replica file transfer failures:",
    "Access denied. (\\\\)",
    "<http://|>",
])
def test_odd_inputs_do_not_raise(text):
    event = parse_pasted(text)
    assert isinstance(event, PastedEvent)
    assert isinstance(classify(event.event_id, event.source, event.description), Classified)
    assert isinstance(classify(None, None, text), Classified)


def test_huge_event_id_is_not_an_int():
    assert parse_pasted("Event ID: 99999999999999999999\nLevel: Error\nDescription:\nx").event_id is None


def _junk(size: int, seed: int) -> str:
    rng = random.Random(seed)
    pieces = ["Log Name:", "Source:", "Date:", "Event ID:", "Description:", "Event Xml:", "```", "\r\n", "\n",
              "Replica file transfer failures:", ": Https destination unavailable.", "host=", "cluster=", "CNn=",
              "Access denied.", "(\\\\", "\\xds-replica\\", "a.contoso.com", ".", "\u00a0", "\x00", "<http://",
              "|", ">", "(", ")", "13/03/2024 2:05:09 PM", "\\\\\\\\", "Cause:", " "]
    alphabet = [chr(c) for c in range(0, 0x80)] + ["\u00e9", "\u200e", "\ufeff", "\U0001f600"]
    out: list[str] = []
    total = 0
    while total < size:
        piece = rng.choice(pieces) if rng.random() < 0.3 else "".join(rng.choices(alphabet, k=rng.randint(1, 40)))
        out.append(piece)
        total += len(piece)
    return "".join(out)[:size]


ADVERSARIAL = {
    "random": _junk(200_000, 1),
    "letters": "a" * 200_000,
    "dotted": "a." * 100_000,
    "hyphens": ("a-" * 50_000 + ".") * 2,
    "backslashes": "\\" * 200_000,
    "unc-opens": "(\\\\" * 66_000,
    "unc-one-paren": "(\\\\a" + " " * 200_000,
    "unc-long": "\\\\" + "a\\" * 100_000,
    "spaces": " " * 200_000,
    "newlines": "\n" * 200_000,
    "nbsp": "\u00a0" * 200_000,
    "labels": "Log Name: Source: " * 11_000,
    "descriptions": "Description: " * 15_000,
    "failures": "Replica file transfer failures: " * 6_000,
    "failure-list": "Replica file transfer failures: " + "edge.contoso.com: Https destination unavailable. " * 4_000,
    "cert": "Unable to match host/cluster against certificate " + "host=a, " * 25_000,
    "cert-many": "Unable to match host/cluster against certificate, host=a.b.com, CN=x " * 3_000,
    "access": "Access denied. (\\\\a.b.com\\xds-replica\\x) " * 5_000,
    "slack": "<http://" + "a" * 200_000,
    "slack-many": "<http://a|" * 20_000,
    "cause": "cause" + " " * 200_000,
    "fences": "```" * 66_000,
    "xml": "Event Xml:\n<System>" + "<TimeCreated SystemTime='" * 8_000,
    "hard-wrapped": ("a" * 60 + "\n") * 3_300,
    "hard-wrapped-unc": "Access denied. (" + ("\\\\a.b.com\\xds-replica\\" + "x" * 40 + "\n") * 1_600,
    "unc-wrapped": ("\\\\a.b.com\\x-\n") * 15_000,
    "fqdn-wrapped": ("edge01.contoso.c\nom: Https destination unavailable.") * 2_200,
    "glued-entries": "Replica file transfer failures: " + "e.contoso.com: Https destination unavailable." * 2_300,
    "glued-certs": "Unable to match host/cluster against certificate, host=a.b.com, CN=x, O=y." * 1_500,
    "wrapped-header": ("Source: " + "S" * 52 + "\n") * 3_300,
    "one-long-token-lines": ("a" * 5_000 + "\n") * 40,
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_large_junk_is_fast_and_safe(name):
    text = ADVERSARIAL[name]
    assert len(text) >= 100_000
    start = time.perf_counter()
    event = parse_pasted(text)
    classify(event.event_id, event.source, event.description)
    classify(None, None, text)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"{name}: {elapsed:.2f}s"  # ~0.1-0.2 s here; linear, no backtracking blow-up


@pytest.mark.parametrize("seed", range(20))
def test_random_small_junk_never_raises(seed):
    text = _junk(random.Random(seed).randint(0, 3000), seed + 100)
    event = parse_pasted(text)
    classify(event.event_id, event.source, event.description)
    classify(None, None, text)


def test_models_are_frozen():
    result = classify(None, None, fixture("seed-1017.txt"))
    with pytest.raises(pydantic.ValidationError):
        result.code = "x"
    with pytest.raises(pydantic.ValidationError):
        parse_pasted("").description = "x"


@pytest.mark.parametrize("width", [41, 45, 52, 60, 66])
def test_event_xml_wrapped_inside_its_values_is_still_read(width):
    lines = [chunk for line in fixture("lync-1017-with-event-xml.txt").split("\n")
             for chunk in ([line[i:i + width] for i in range(0, len(line), width)] or [""])]
    event = parse_pasted("\n".join(lines))
    assert (event.source, event.event_id, event.computer, event.log_name) == (FTA, 1017, "fe01.contoso.com",
                                                                              "Lync Server")
    assert event.time == datetime(2024, 3, 12, 14, 5, 9, 123456, tzinfo=UTC)
    assert classify(event.event_id, event.source, event.description).replicas == ["edge01.contoso.com"]
