"""Lync / Skype for Business event text -> typed facts. Pure functions.

Two entry points:

* ``parse_pasted`` reads what Event Viewer's "Copy details as text" puts on
  the clipboard, as it arrives from a chat message: CRLF or LF, any spacing
  (the seed pads with no-break spaces), Slack code fences around it, perhaps an
  "Event Xml:" section after the description. It never raises.
* ``classify`` names the CMS replication failure scenario an LS File Transfer
  Agent Service event describes (domain.md section 4), or the LS Master
  Replicator Agent Service's "Can't watch" failure on the CMS file store, and
  the replicas, UNC paths and certificate facts it mentions. It never guesses:
  no signature, or an event id / source that disagrees, gives ``code=None``.

Real Event Viewer text is not tidy. When several replicas fail, Windows writes
the per-replica entries back to back with no separator after the period
(``a.contoso.com: Https destination unavailable.b.contoso.com: ...``,
``...\\from-replica.)b.contoso.com: Access failed. ...``), and a paste is often
wrapped, sometimes in the middle of an FQDN or a UNC path. ``_unwrap`` and
``_entry_host`` undo both; their comments give the rules.

Every regular expression here is linear in its input: no nested or adjacent
quantifiers that can overlap, and scans that could restart inside a token are
anchored by a look-behind. Free text goes through ``str.split`` and plain
loops, not through backtracking patterns.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

from pydantic import Field

from cms.knowledge import FindingCode
from cms.models import Model

HTTPS_UNREACHABLE = FindingCode.replica_https_unreachable
EDGE_CERT_INVALID = FindingCode.replica_edge_cert_invalid
SHARE_ACCESS_DENIED = FindingCode.replica_share_access_denied

MASTER_WATCH_FAILED = FindingCode.cms_master_replicator_watch_failed

EVENT_IDS = {HTTPS_UNREACHABLE: 1017, EDGE_CERT_INVALID: 1015, SHARE_ACCESS_DENIED: 1034, MASTER_WATCH_FAILED: 2020}
FTA_SOURCE = "ls file transfer agent service"
MRA_SOURCE = "ls master replicator agent service"
FTA_CODES = frozenset({HTTPS_UNREACHABLE, EDGE_CERT_INVALID, SHARE_ACCESS_DENIED})


class CertificateFacts(Model):
    host: str | None = None
    cluster: str | None = None
    subject: str | None = None
    subject_cn: str | None = None


class Classified(Model):
    code: FindingCode | None = None
    replicas: list[str] = Field(default_factory=list)
    paths: list[str] = Field(default_factory=list)
    certificate: CertificateFacts | None = None  # the first of ``certificates``
    certificates: list[CertificateFacts] = Field(default_factory=list)


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
# ")" too: Windows glues the next entry straight after "(<path>.)"; "." for a
# wrap that left the reason's final period at the start of the next line.
_LIST_BEFORE = frozenset(" \t\n,;:().[\"'")


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


# --------------------------------------------------------------------------- wrapped lines

# A pasted event is often wrapped: hard-wrapped at a fixed width by a console,
# a mail client or a chat export (every character kept, a newline inserted
# every N columns, even inside an FQDN or a UNC path), or word-wrapped the way
# Microsoft's own article on File Store problems shows event 2020 (lines of
# 131-150 columns broken after a space, after a hyphen or before a backslash,
# e.g. "...\xds-master\replicas" + newline + "\lyncfe01.contoso.com\...").
#
# ``_unwrap`` re-joins a line break (with nothing in between) only when one of
# these holds; any other break stays a newline, i.e. whitespace:
#
# W. Fixed width: the longest line is at least _WRAP_MIN columns long and at
#    least two lines of exactly that length are followed by a non-blank line.
#    Then every line of exactly that length is joined to the next non-blank
#    one, unless it ends a known failure reason (see F: a new entry starts
#    there; list lines of equal length are a coincidence, not a wrap). An
#    unwrapped event has one longest line, not several of equal length; a line
#    that ended in spaces a tool trimmed is shorter, so its break rightly stays
#    whitespace.
# U. UNC continuation: the line ends inside a UNC path (its last
#    whitespace-free run holds "\\" and the path is not closed by ")" "," ";"),
#    the next line does not start a new path ("\\"), and either the path ends
#    in "\", "-" or "." or the next line's first run contains a "\" (a path
#    fragment such as "ster\data.zip)" or "\lyncfe01.contoso.com\..." never
#    stands on its own). Also "(" at the end of a line and "\\" at the start of
#    the next.
# F. FQDN continuation: no whitespace on either side of the break; the
#    [A-Za-z0-9.-] runs on both sides join into a valid FQDN; the two runs are
#    not both valid FQDNs already (two hosts on consecutive lines are never
#    glued); the left run has a dot or ends in "-", or the right one starts
#    with "." or "-" (so two plain words, "unavailable" + "edge02.contoso.com",
#    are never glued: that needs rule W); and the text before the break does
#    not end a known failure reason ("Https destination unavailable.", "Access
#    failed.", "Access denied."), which is where a new entry starts.
#
# Blank lines (paragraph breaks) are never joined. Rule F may still glue a
# reason's last word to the next host ("...not reachable." + "edge02..."):
# that is the very shape Windows writes for back-to-back entries, and
# ``_entry_host`` splits it again with the same rules as for Windows' own glue.

_WRAP_MIN = 40
_KNOWN_REASONS = ("https destination unavailable", "access failed", "access denied", "access is denied")
_TAIL_MAX = 4096  # how much of a logical line the rules look back at
_FQDN_TAIL = re.compile(r"[A-Za-z0-9.-]{1,253}\Z")
_FQDN_HEAD = re.compile(r"[A-Za-z0-9.-]{1,253}")
_PATH_CLOSED = frozenset("),;")


def _wrap_width(lines: list[str]) -> int | None:
    if len(lines) < 3:
        return None
    width = max(len(line) for line in lines)
    if width < _WRAP_MIN:
        return None
    full = sum(1 for i in range(len(lines) - 1) if len(lines[i]) == width and lines[i + 1].strip())
    return width if full >= 2 else None


def _ends_reason(text: str) -> bool:
    tail = " ".join(text[-80:].split()).lower().rstrip(" .")
    return tail.endswith(_KNOWN_REASONS)


def _joins(logical: str, line: str, nxt: str, width: int | None) -> bool:
    """Whether the break between ``line`` (ending ``logical``) and ``nxt`` is a wrap (rules W, U, F)."""
    if not nxt.strip() or not line.strip():
        return False
    if width is not None and len(line) == width:
        return not _ends_reason(logical[-_TAIL_MAX:])
    if line[-1].isspace() or nxt[0].isspace():
        return False
    left = logical[-_TAIL_MAX:].rsplit(None, 1)[-1]
    right = nxt[:_TAIL_MAX].split(None, 1)[0]
    unc = left.rfind("\\\\")
    if unc >= 0:
        path = left[unc:]
        if path[-1] not in _PATH_CLOSED and not right.startswith("\\\\") and len(path) > 2 and (
                path.endswith(("\\", "-", ".")) or "\\" in right):
            return True
    if left.endswith("(") and right.startswith("\\\\"):
        return True
    t1 = _FQDN_TAIL.search(left)
    t2 = _FQDN_HEAD.match(right)
    if t1 is None or t2 is None:
        return False
    a, b = t1.group(), t2.group()
    if _fqdn(a + b) is None or (_fqdn(a) and _fqdn(b)):
        return False
    if not ("." in a or a.endswith("-") or b.startswith((".", "-"))):
        return False
    return not _ends_reason(logical[-_TAIL_MAX:])


def _unwrap(text: str, width: int | None = None) -> str:
    """``text`` (LF newlines) with wrapped lines re-joined; see the rules above. Pure, linear."""
    if "\n" not in text:
        return text
    lines = text.split("\n")
    if width is None:
        width = _wrap_width(lines)
    out: list[list[str]] = [[lines[0]]]
    logical = lines[0][-_TAIL_MAX:]  # the end of the logical line being built
    for prev, line in zip(lines, lines[1:], strict=False):
        if _joins(logical, prev, line, width):
            out[-1].append(line)
            logical = (logical + line)[-_TAIL_MAX:]
        else:
            out.append([line])
            logical = line[-_TAIL_MAX:]
    return "\n".join("".join(parts) for parts in out)


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
_CANT_WATCH = re.compile(r"(?<![A-Za-z])(?:can['\u2019]?t|can\s?not)\s+watch(?![A-Za-z])", re.I)
_MASTER_REPLICATOR = re.compile(r"master\s+replicator\s+agent", re.I)

_KEY_HOST = re.compile(r"(?<![A-Za-z])host\s?=\s?([^,\s]+)", re.I)
_KEY_CLUSTER = re.compile(r"(?<![A-Za-z])cluster\s?=\s?([^,\s]+)", re.I)
_RDN = re.compile(r"(?<![A-Za-z0-9])(?:CNn?|OU|O|DC|C|L|ST|S|E)\s?=", re.I)
_RDN_CN = re.compile(r"(?<![A-Za-z0-9])CNn?\s?=\s?([^,]*)", re.I)
_SENTENCE_END = re.compile(r"\.(?:\s|$)")

_UNC_PAREN = re.compile(r"\(([ \t\u00a0\n]*\\\\[^()\n]{1,4096})\)")
_UNC_BARE = re.compile(r"(?<![\\\w])\\\\[^\s\\/()<>\"'|,;]+(?:\\[^\s\\()<>\"'|,;]*)*")
_UNC_SPLIT = re.compile(r"[ ,;]+(?=\\\\)")


def _entry_host(reason_so_far: str, token: str) -> int:
    """Where the host starts in ``token``, an FQDN-shaped run right before an entry's ":".

    Windows glues an entry to the previous one's reason without a separator:
    "...: Https destination unavailable.edge02.contoso.com: ...". The run then
    reads "unavailable.edge02.contoso.com". Its first label belongs to the
    previous reason (``reason_so_far``, the text since that entry's ":") when
    the remainder is an FQDN and either the reason plus that label ends a
    known reason, or the reason is not complete yet (it is not a known reason
    and does not end in "." "," ";" ")"). Returns 0 when the run is the host.
    """
    dot = token.find(".")
    if dot <= 0 or _fqdn(token[dot + 1:]) is None:
        return 0
    before = " ".join(reason_so_far.split()).lower()
    if not before or before.rstrip(" .").endswith(_KNOWN_REASONS):
        return 0
    if (before + " " + token[:dot].lower()).endswith(_KNOWN_REASONS):
        return dot + 1
    return dot + 1 if before[-1] not in ".,;)" else 0


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
            token = tok.group()
            after = tok.end()
            while after < end and text[after].isspace():
                after += 1
            is_entry = after < end and text[after] == ":" and not text[after + 1:after + 2].isdigit()
            offset = _entry_host(text[entries[-1][2]:tok.start()], token) if is_entry and entries else 0
            name = _fqdn(token[offset:])
            if name is None:
                continue
            seen.append((tok.start() + offset, name))
            if is_entry:
                entries.append((tok.start() + offset, name, after + 1))
        for i, (pos, name, reason_at) in enumerate(entries):
            reason_end = entries[i + 1][0] if i + 1 < len(entries) else end
            reason = _flat(text[reason_at:reason_end]).lower().lstrip(" ,;.-")
            if reason.startswith(_HTTPS_DOWN):
                https.append((pos, name))
    return seen, https


def _certificates(text: str) -> list[tuple[int, CertificateFacts]]:
    """Every "Unable to match host/cluster against certificate" reason, back-to-back ones included."""
    sigs = list(_CERT.finditer(text))
    found: list[tuple[int, CertificateFacts]] = []
    stop: re.Match[str] | None = None
    searched_from = -1
    for i, sig in enumerate(sigs):
        if searched_from < 0 or (stop is not None and stop.start() < sig.end()):
            stop = _PARAGRAPH_END.search(text, sig.end())
            searched_from = sig.end()
        end = stop.start() if stop else len(text)
        if i + 1 < len(sigs):
            end = min(end, sigs[i + 1].start())
        found.append((sig.start(), _certificate_facts(_flat(text[sig.end():max(end, sig.end())]))))
    return found


def _certificate_facts(tail: str) -> CertificateFacts:
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

    return CertificateFacts(
        host=value(host), cluster=value(cluster), subject=subject,
        subject_cn=(cn.group(1).strip().rstrip(".") or None) if cn else None)


def _split_glued_paths(path: str) -> list[str]:
    """A UNC path never holds "\\\\" after its start: one that does is two paths written back to back."""
    parts = path[2:].split("\\\\")
    return ["\\\\" + part for part in parts if part.strip(" .,;")]


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
                found.extend((offset, p.rstrip(".,;")) for p in _split_glued_paths(part))
    ci = 0
    for m in _UNC_BARE.finditer(text):
        while ci < len(covered) and covered[ci][1] <= m.start():
            ci += 1
        if ci < len(covered) and covered[ci][0] <= m.start() < covered[ci][1]:
            continue
        path = m.group().rstrip(".,;:")
        if len(path) > 2:
            found.extend((m.start(), p.rstrip(".,;:")) for p in _split_glued_paths(path))
    found.sort(key=lambda item: item[0])
    return found


def _unc_host_share(path: str) -> tuple[str | None, str]:
    parts = path[2:].split("\\")
    share = parts[1].strip().lower() if len(parts) > 1 else ""
    return _hostname(parts[0]), share


def _master_replicas(paths: list[tuple[int, str]]) -> list[tuple[int, str]] | None:
    """Replicas named by "...\\xds-master\\replicas\\<fqdn>\\..." paths; None when no path is under xds-master."""
    under_master = False
    names: list[tuple[int, str]] = []
    for pos, path in paths:
        parts = [p.strip().lower() for p in path[2:].split("\\")]
        if "xds-master" not in parts[1:]:
            continue
        under_master = True
        i = parts.index("xds-master", 1)
        if i + 2 < len(parts) and parts[i + 1] == "replicas":
            name = _fqdn(parts[i + 2])
            if name:
                names.append((pos, name))
    return names if under_master else None


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

    The Master Replicator Agent's "Can't watch \\\\<file store>\\...\\xds-master\\
    replicas\\<replica>\\from-replica" failure (event 2020) is a signature of
    its own: a text showing it, or an event from that source, never gets a
    File Transfer Agent code.
    """
    text = _unwrap(_clean(message))

    seen, https = _replica_failures(text)
    certs = _certificates(text)
    paths = _unc_paths(text)
    replica_paths: list[tuple[int, str]] = []
    for pos, path in paths:
        host, share = _unc_host_share(path)
        if host and share == "xds-replica":
            replica_paths.append((pos, host))
    cert_hosts: list[tuple[int, str]] = []
    for pos, facts in certs:
        for value in (facts.host, facts.cluster):
            name = _hostname(value) if value else None
            if name:
                cert_hosts.append((pos, name))
    master = _master_replicas(paths)
    master_sig = master is not None and (_CANT_WATCH.search(text) is not None
                                         or _MASTER_REPLICATOR.search(text) is not None)

    matched: dict[FindingCode, list[tuple[int, str]]] = {}
    if master_sig and master is not None:
        matched[MASTER_WATCH_FAILED] = master + [(pos, name) for pos, name in seen if name not in
                                                 {n for _, n in master}]
    else:
        if https:
            matched[HTTPS_UNREACHABLE] = https
        if certs:
            matched[EDGE_CERT_INVALID] = cert_hosts
        if replica_paths and _ACCESS_DENIED.search(text):
            matched[SHARE_ACCESS_DENIED] = replica_paths

    src = _flat(source).lower() if isinstance(source, str) and source.strip() else None
    if src is None:
        allowed = set(EVENT_IDS)
    elif src == FTA_SOURCE:
        allowed = set(FTA_CODES)
    elif src == MRA_SOURCE:
        allowed = {MASTER_WATCH_FAILED}
    else:
        allowed = set()
    candidates = [c for c in matched if c in allowed and (event_id is None or EVENT_IDS[c] == event_id)]
    code = candidates[0] if len(candidates) == 1 else None

    replicas = matched[code] if code else seen + cert_hosts + replica_paths + (master or [])
    return Classified(
        code=code,
        replicas=_unique(replicas),
        paths=_unique(paths),
        certificate=certs[0][1] if certs else None,
        certificates=[facts for _, facts in certs],
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


def _unwrap_header(head: str, width: int) -> str:
    """Header lines a fixed-width wrap cut ("Source: LS File Transfer Agent Ser" + "vice"), re-joined.

    A line of exactly ``width`` columns continues on the next one unless that one starts a label.
    """
    lines = head.split("\n")
    out: list[list[str]] = [[lines[0]]]
    for prev, line in zip(lines, lines[1:], strict=False):
        if len(prev) == width and line.strip() and not _LABELS.match(line.lstrip(" \t\u00a0")):
            out[-1].append(line)
        else:
            out.append([line])
    return "\n".join("".join(parts) for parts in out)


def parse_pasted(text: str) -> PastedEvent:
    """An Event Viewer "Copy details as text" paste -> its fields. Never raises.

    Without any header the whole text is the description. With headers but no
    "Description:" label, the lines after the last header are.
    """
    text = _strip_fences(_clean(text))

    width = _wrap_width(text.split("\n"))
    desc = _DESCRIPTION.search(text)
    head = text[:desc.start()] if desc else text
    if width is not None:
        head = _unwrap_header(head, width)
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
        # A wrapped paste wraps the XML too (a 60-column wrap splits SystemTime="..."): the
        # whole paste's fixed width, else the XML's own rules (see _unwrap), before reading it.
        xml = _unwrap(xml, width)

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
