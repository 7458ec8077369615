"""Lync / Skype for Business event text -> typed facts. Pure functions.

Two entry points:

* ``parse_pasted`` reads what Event Viewer's "Copy details as text" puts on
  the clipboard, as it arrives from a chat message: CRLF or LF, any spacing
  (the seed pads with no-break spaces), Slack code fences around it, perhaps an
  "Event Xml:" section after the description. It never raises.
* ``classify`` names the CMS replication failure scenario an LS File Transfer
  Agent Service event describes (domain.md section 4), and the replicas, UNC
  paths and certificate facts it mentions. It never guesses: no signature, or
  an event id / source that disagrees, gives ``code=None``.

Every regular expression here is linear in its input: no nested or adjacent
quantifiers that can overlap, and scans that could restart inside a token are
anchored by a look-behind. Free text goes through ``str.split`` and plain
loops, not through backtracking patterns.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

from pydantic import Field

from workers.models import Model

HTTPS_UNREACHABLE = "replica.https-unreachable"
EDGE_CERT_INVALID = "replica.edge-cert-invalid"
SHARE_ACCESS_DENIED = "replica.share-access-denied"

EVENT_IDS = {HTTPS_UNREACHABLE: 1017, EDGE_CERT_INVALID: 1015, SHARE_ACCESS_DENIED: 1034}
FTA_SOURCE = "ls file transfer agent service"


class CertificateFacts(Model):
    host: str | None = None
    cluster: str | None = None
    subject: str | None = None
    subject_cn: str | None = None


class Classified(Model):
    code: str | None = None
    replicas: list[str] = Field(default_factory=list)
    paths: list[str] = Field(default_factory=list)
    certificate: CertificateFacts | None = None


class PastedEvent(Model):
    log_name: str | None = None
    source: str | None = None
    event_id: int | None = None
    task_category: str | None = None
    level: str | None = None
    computer: str | None = None
    date_text: str | None = None
    time: datetime | None = None
    date_ambiguous: bool = False
    description: str = ""


# --------------------------------------------------------------------------- text hygiene

# Invisible format characters Windows and chat clients sprinkle into copied
# text: LRM/RLM and bidi embeddings (Event Viewer dates), zero-width spaces, BOM.
_FORMAT_CHARS = re.compile("[\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")
# Slack rewrites what looks like a link as <http://x|x> or <http://x>.
_SLACK_LINK = re.compile(r"<(?:https?|mailto):[^<>|\s]{0,2048}(?:\|([^<>\n]{0,2048}))?>")


def _slack_link(m: re.Match[str]) -> str:
    if m.group(1) is not None:
        return m.group(1)
    inner = m.group(0)[1:-1]
    return inner.split(":", 1)[1].lstrip("/") if inner.lower().startswith("mailto:") else inner


def _clean(text: str) -> str:
    """LF newlines, no invisible format characters, Slack links unwrapped."""
    if not isinstance(text, str):
        return ""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _FORMAT_CHARS.sub("", text)
    if "<" in text:
        text = _SLACK_LINK.sub(_slack_link, text)
    return text


def _flat(text: str) -> str:
    """All whitespace runs (newlines, no-break spaces, tabs) as one space."""
    return " ".join(text.split())


# --------------------------------------------------------------------------- host names

_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*")
# A name with a single dot counts as a host only under one of these (so that
# "data.zip" or "setup.exe" never does); two or more dots and an alphabetic
# last label is enough otherwise.
_TLDS = frozenset({
    "com", "net", "org", "edu", "gov", "mil", "int", "biz", "info", "io",
    "local", "lan", "corp", "internal", "intranet", "intra", "home", "localdomain",
})
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_HOSTNAME = re.compile(r"[a-z0-9][a-z0-9.-]{0,252}")
# What may stand right before a host named in a list (not a URL, path or key=).
_LIST_BEFORE = frozenset(" \t\n,;:([\"'")


def _fqdn(token: str) -> str | None:
    name = token.rstrip(".").lower()
    if len(name) > 253:
        return None
    labels = name.split(".")
    if len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
        return None
    last = labels[-1]
    if not (last.isascii() and last.isalpha() and len(last) >= 2):
        return None
    if len(labels) == 2 and last not in _TLDS:
        return None
    return name


def _hostname(value: str) -> str | None:
    """A host as named by host=, cluster= or a UNC path: any DNS-ish name."""
    name = value.strip().rstrip(".,;").lower()
    return name if _HOSTNAME.fullmatch(name) and any(c.isalnum() for c in name) else None


# --------------------------------------------------------------------------- signatures

_FAILURES = re.compile(r"replica\s+file\s+transfer\s+failures?\s*:", re.I)
_SECTION_END = re.compile(
    r"(?<![A-Za-z])(?:cause|resolution)\s*:|^[ \t]*event[ \t]*xml[ \t]*:|replica\s+file\s+transfer\s+failures?\s*:",
    re.I | re.M)
_HTTPS_DOWN = "https destination unavailable"
_CERT = re.compile(r"unable\s+to\s+match\s+host\s*/\s*cluster\s+against\s+(?:the\s+)?certificate", re.I)
_PARAGRAPH_END = re.compile(r"\n[ \t\u00a0]*\n|(?<![A-Za-z])(?:cause|resolution)\s*:|^[ \t]*event[ \t]*xml[ \t]*:",
                            re.I | re.M)
_ACCESS_DENIED = re.compile(r"access\s+(?:is\s+)?denied", re.I)

_KEY_HOST = re.compile(r"(?<![A-Za-z])host\s?=\s?([^,\s]+)", re.I)
_KEY_CLUSTER = re.compile(r"(?<![A-Za-z])cluster\s?=\s?([^,\s]+)", re.I)
_RDN = re.compile(r"(?<![A-Za-z0-9])(?:CNn?|OU|O|DC|C|L|ST|S|E)\s?=", re.I)
_RDN_CN = re.compile(r"(?<![A-Za-z0-9])CNn?\s?=\s?([^,]*)", re.I)
_SENTENCE_END = re.compile(r"\.(?:\s|$)")

_UNC_PAREN = re.compile(r"\(([ \t\u00a0]*\\\\[^()\n]{1,4096})\)")
_UNC_BARE = re.compile(r"(?<![\\\w])\\\\[^\s\\/()<>\"'|,;]+(?:\\[^\s\\()<>\"'|,;]*)*")
_UNC_SPLIT = re.compile(r"[ ,;]+(?=\\\\)")


def _replica_failures(text: str) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """Hosts in "Replica file transfer failures:" lists.

    Returns (all FQDNs seen in the lists, those given as "<fqdn>: Https
    destination unavailable"), each with its position in ``text``.
    """
    seen: list[tuple[int, str]] = []
    https: list[tuple[int, str]] = []
    for head in _FAILURES.finditer(text):
        start = head.end()
        stop = _SECTION_END.search(text, start)
        end = stop.start() if stop else len(text)
        entries: list[tuple[int, str, int]] = []  # (position, fqdn, where its reason starts)
        for tok in _TOKEN.finditer(text, start, end):
            before = text[tok.start() - 1] if tok.start() > start else " "
            if before not in _LIST_BEFORE and not before.isspace():
                continue
            name = _fqdn(tok.group())
            if name is None:
                continue
            seen.append((tok.start(), name))
            after = tok.end()
            while after < end and text[after].isspace():
                after += 1
            if after < end and text[after] == ":" and not text[after + 1:after + 2].isdigit():
                entries.append((tok.start(), name, after + 1))
        for i, (pos, name, reason_at) in enumerate(entries):
            reason_end = entries[i + 1][0] if i + 1 < len(entries) else end
            reason = _flat(text[reason_at:reason_end]).lower().lstrip(" ,;.-")
            if reason.startswith(_HTTPS_DOWN):
                https.append((pos, name))
    return seen, https


def _certificate(text: str) -> tuple[int, CertificateFacts] | None:
    sig = _CERT.search(text)
    if sig is None:
        return None
    stop = _PARAGRAPH_END.search(text, sig.end())
    tail = _flat(text[sig.end():stop.start() if stop else len(text)])
    host = _KEY_HOST.search(tail)
    cluster = _KEY_CLUSTER.search(tail)
    after = max((m.end() for m in (host, cluster) if m), default=0)
    subject = None
    rdn = _RDN.search(tail, after)
    if rdn is not None:
        end = _SENTENCE_END.search(tail, rdn.start())
        subject = tail[rdn.start():end.start() if end else len(tail)].strip().rstrip(",;. ") or None
    cn = _RDN_CN.search(subject) if subject else None

    def value(m: re.Match[str] | None) -> str | None:
        return (m.group(1).strip().rstrip(".,;") or None) if m else None

    return sig.start(), CertificateFacts(
        host=value(host), cluster=value(cluster), subject=subject,
        subject_cn=(cn.group(1).strip().rstrip(".") or None) if cn else None)


def _unc_paths(text: str) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    covered: list[tuple[int, int]] = []
    for m in _UNC_PAREN.finditer(text):
        covered.append(m.span())
        inner = _flat(m.group(1))
        offset = m.start(1)
        for part in _UNC_SPLIT.split(inner):
            part = part.strip().rstrip(".,;")
            if part.startswith("\\\\") and len(part) > 2:
                found.append((offset, part))
    ci = 0
    for m in _UNC_BARE.finditer(text):
        while ci < len(covered) and covered[ci][1] <= m.start():
            ci += 1
        if ci < len(covered) and covered[ci][0] <= m.start() < covered[ci][1]:
            continue
        path = m.group().rstrip(".,;:")
        if len(path) > 2:
            found.append((m.start(), path))
    found.sort(key=lambda item: item[0])
    return found


def _unc_host_share(path: str) -> tuple[str | None, str]:
    parts = path[2:].split("\\")
    share = parts[1].strip().lower() if len(parts) > 1 else ""
    return _hostname(parts[0]), share


def _unique(items: list[tuple[int, str]]) -> list[str]:
    out: dict[str, None] = {}
    for _, item in sorted(items, key=lambda x: x[0]):
        out.setdefault(item, None)
    return list(out)


def classify(event_id: int | None, source: str | None, message: str) -> Classified:
    """Which CMS replication failure ``message`` (an event description) reports.

    ``event_id`` and ``source``, when given, must agree with the scenario the
    text matches. A text matching several scenarios, none, or one its id or
    source contradicts gives ``code=None``; replicas, paths and certificate
    facts are reported whatever the code.
    """
    text = _clean(message)

    seen, https = _replica_failures(text)
    cert = _certificate(text)
    paths = _unc_paths(text)
    replica_paths: list[tuple[int, str]] = []
    for pos, path in paths:
        host, share = _unc_host_share(path)
        if host and share == "xds-replica":
            replica_paths.append((pos, host))
    cert_hosts: list[tuple[int, str]] = []
    if cert is not None:
        for value in (cert[1].host, cert[1].cluster):
            name = _hostname(value) if value else None
            if name:
                cert_hosts.append((cert[0], name))

    matched: dict[str, list[tuple[int, str]]] = {}
    if https:
        matched[HTTPS_UNREACHABLE] = https
    if cert is not None:
        matched[EDGE_CERT_INVALID] = cert_hosts
    if replica_paths and _ACCESS_DENIED.search(text):
        matched[SHARE_ACCESS_DENIED] = replica_paths

    source_ok = source is None or not source.strip() or _flat(source).lower() == FTA_SOURCE
    if event_id is not None:
        candidates = [c for c in matched if EVENT_IDS[c] == event_id]
    else:
        candidates = list(matched)
    code = candidates[0] if source_ok and len(candidates) == 1 else None

    replicas = matched[code] if code else seen + cert_hosts + replica_paths
    return Classified(
        code=code,
        replicas=_unique(replicas),
        paths=_unique(paths),
        certificate=cert[1] if cert else None,
    )


# --------------------------------------------------------------------------- pasted events

_FENCE_TAG = re.compile(r"[A-Za-z0-9_+.-]{0,40}[ \t]*")
_DESCRIPTION = re.compile(r"(?:^|(?<=\s))description[ \t\u00a0]*:", re.I | re.M)
_LABEL_NAMES = {
    "logname": "log_name", "source": "source", "date": "date_text", "eventid": "event_id",
    "taskcategory": "task_category", "level": "level", "keywords": None, "user": None,
    "computer": "computer", "opcode": None,
}
_LABELS = re.compile(
    r"(?:^|(?<=\s))(log[ \t\u00a0]?name|source|date|event[ \t\u00a0]?id|task[ \t\u00a0]?category|level"
    r"|keywords|user|computer|op[ \t\u00a0]?code)[ \t\u00a0]*:", re.I | re.M)
_EVENT_XML = re.compile(r"^[ \t\u00a0]*event[ \t\u00a0]*xml[ \t\u00a0]*:", re.I | re.M)
_LEADING_INT = re.compile(r"\d{1,9}(?!\d)")

_XML_EVENT_ID = re.compile(r"<EventID(?:\s[^<>]{0,200})?>\s?(\d{1,9})\s?</EventID>")
_XML_PROVIDER = re.compile(r"<Provider\s[^<>]{0,200}?Name\s?=\s?['\"]([^'\"<>]{1,200})['\"]")
_XML_TIME = re.compile(r"<TimeCreated\s[^<>]{0,200}?SystemTime\s?=\s?['\"]([^'\"<>]{1,64})['\"]")
_XML_COMPUTER = re.compile(r"<Computer>([^<>]{1,255})</Computer>")
_XML_CHANNEL = re.compile(r"<Channel>([^<>]{1,255})</Channel>")


def _strip_fences(text: str) -> str:
    """The content of the first ``` block, when there is one; chat around it is dropped.

    The opening fence may carry a language tag on its own line (```AsciiDoc)
    or run straight into the text (```Log Name: ...); an unclosed block runs
    to the end.
    """
    start = text.find("```")
    if start < 0:
        return text
    start += 3
    line_end = text.find("\n", start)
    first_line = text[start:line_end if line_end >= 0 else len(text)]
    if _FENCE_TAG.fullmatch(first_line):
        start = line_end + 1 if line_end >= 0 else len(text)
    end = text.find("```", start)
    return text[start:end if end >= 0 else len(text)]


def _label_key(m: re.Match[str]) -> str:
    return "".join(m.group(1).lower().split())


def _field(value: str) -> str | None:
    line = value.split("\n", 1)[0]
    line = " ".join(line.split())
    return line or None


def _event_id(value: str | None) -> int | None:
    if not value:
        return None
    m = _LEADING_INT.match(value)
    return int(m.group()) if m else None


def parse_pasted(text: str) -> PastedEvent:
    """An Event Viewer "Copy details as text" paste -> its fields. Never raises.

    Without any header the whole text is the description. With headers but no
    "Description:" label, the lines after the last header are.
    """
    text = _strip_fences(_clean(text))

    desc = _DESCRIPTION.search(text)
    head = text[:desc.start()] if desc else text
    fields: dict[str, str | None] = {}
    labels = list(_LABELS.finditer(head))
    if desc is None and len({_label_key(m) for m in labels}) < 2:
        labels = []  # one "User:" line in a bare description is not a header block
    for i, m in enumerate(labels):
        key = _LABEL_NAMES[_label_key(m)]
        if key is None or key in fields:
            continue
        end = labels[i + 1].start() if i + 1 < len(labels) else len(head)
        fields[key] = _field(head[m.end():end])

    if desc is not None:
        body = text[desc.end():]
    elif labels:
        newline = head.find("\n", labels[-1].end())
        body = head[newline + 1:] if newline >= 0 else ""
    else:
        body = text
    xml = None
    cut = _EVENT_XML.search(body)
    if cut is not None:
        xml = body[cut.end():]
        body = body[:cut.start()]
    elif not labels and desc is None and "<System>" in body:
        xml = body  # the XML view pasted on its own: read its fields, keep it all as the description

    log_name = fields.get("log_name")
    source = fields.get("source")
    event_id = _event_id(fields.get("event_id"))
    computer = fields.get("computer")
    date_text = fields.get("date_text")
    moment, ambiguous = parse_event_time(date_text)

    if xml is not None:
        def first(rx: re.Pattern[str]) -> str | None:
            m = rx.search(xml)
            return _field(m.group(1)) if m else None
        log_name = log_name or first(_XML_CHANNEL)
        source = source or first(_XML_PROVIDER)
        event_id = event_id if event_id is not None else _event_id(first(_XML_EVENT_ID))
        computer = computer or first(_XML_COMPUTER)
        system_time, _ = parse_event_time(first(_XML_TIME))
        if system_time is not None:  # the record's own UTC instant beats the viewer's local rendering
            moment, ambiguous = system_time, False

    return PastedEvent(
        log_name=log_name,
        source=source,
        event_id=event_id,
        task_category=fields.get("task_category"),
        level=fields.get("level"),
        computer=computer,
        date_text=date_text,
        time=moment,
        date_ambiguous=ambiguous,
        description=body.strip(),
    )


# --------------------------------------------------------------------------- dates

_TIME = (r"(?:[ T,]+(?P<h>\d{1,2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:[.,](?P<f>\d{1,9}))?)?"
         r"(?: ?(?P<ampm>[AaPp]\.?[Mm]\.?))?)?"
         r"(?: ?(?P<tz>[Zz]|UTC|GMT|[+-]\d{2}(?::?\d{2})?|(?:UTC|GMT)[+-]\d{2}(?::?\d{2})?))?")
_YMD = re.compile(r"(?P<y>\d{4})[-/.](?P<a>\d{1,2})[-/.](?P<b>\d{1,2})" + _TIME)
_DMY = re.compile(r"(?P<a>\d{1,2})[-/.](?P<b>\d{1,2})[-/.](?P<y>\d{4})" + _TIME)
_MONTH_DAY = re.compile(r"(?:[A-Za-z]{3,9},? )?(?P<mon>[A-Za-z]{3,9})\.? (?P<d>\d{1,2}),? (?P<y>\d{4})" + _TIME)
_DAY_MONTH = re.compile(r"(?:[A-Za-z]{3,9},? )?(?P<d>\d{1,2})\.? (?P<mon>[A-Za-z]{3,9})\.?,? (?P<y>\d{4})" + _TIME)
_MONTHS = {name: i + 1 for i, name in enumerate(
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"])}


def _moment(year: int, month: int, day: int, m: re.Match[str]) -> datetime | None:
    hour = int(m.group("h") or 0)
    minute = int(m.group("mi") or 0)
    second = int(m.group("s") or 0)
    micro = int((m.group("f") or "0")[:6].ljust(6, "0"))
    ampm = m.group("ampm")
    if ampm:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if ampm[0] in "Pp" else 0)
    zone = UTC
    tz = m.group("tz")
    if tz and tz[-1].isdigit():
        sign = -1 if "-" in tz else 1
        digits = tz.lstrip("UTCGM").lstrip("+-").replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
        if hours > 23 or minutes > 59:
            return None
        zone = timezone(sign * timedelta(hours=hours, minutes=minutes))
    try:
        return datetime(year, month, day, hour, minute, second, micro, tzinfo=zone).astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def parse_event_time(text: str | None) -> tuple[datetime | None, bool]:
    """An event date as pasted -> (aware UTC datetime or None, day/month ambiguous).

    A time without a zone is taken as UTC. In "a/b/yyyy" a part over 12 tells
    which is the day; with both at most 12 (and different) it is read as
    dd/mm/yyyy and flagged ambiguous.
    """
    if not text:
        return None, False
    s = " ".join(_FORMAT_CHARS.sub("", text).split())
    if not s or len(s) > 80:
        return None, False
    m = _YMD.fullmatch(s)
    if m:
        return _moment(int(m.group("y")), int(m.group("a")), int(m.group("b")), m), False
    m = _DMY.fullmatch(s)
    if m:
        a, b, year = int(m.group("a")), int(m.group("b")), int(m.group("y"))
        if a > 12 and b > 12:
            return None, False
        if b > 12:  # mm/dd/yyyy
            return _moment(year, a, b, m), False
        moment = _moment(year, b, a, m)  # dd/mm/yyyy, decided by a > 12 or by default
        return moment, moment is not None and a <= 12 and a != b
    m = _MONTH_DAY.fullmatch(s) or _DAY_MONTH.fullmatch(s)
    if m:
        month = _MONTHS.get(m.group("mon")[:3].lower())
        if month is None:
            return None, False
        return _moment(int(m.group("y")), month, int(m.group("d")), m), False
    return None, False
