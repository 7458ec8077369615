"""Names out of a capture: every server, pool, domain, account and organisation name replaced
consistently, and secrets scrubbed, before anything is written (workers/runs/capture.py).

Pure text work, no I/O. One `Renamer` per capture, so the mapping is stable inside it:
`fe01.contoso.com` is `server-001.example.invalid` in the topology copy, in every probe's
parameters and answer, in event texts, UNC paths and certificate subjects alike, and `FE01`
(its NetBIOS name) is `SERVER-001` wherever a host writes it. What is replaced:

- from the topology: servers (`server-NNN`), pools (`pool-NNN`), back-end SQL servers
  (`sql-NNN`), Edge internal names (`host-NNN`), sites (`site-NNN`), the DNS domains of all
  of them (the deployment's domain is `example.invalid`, others `domain-N.example.invalid`),
  each domain's first label and NetBIOS form (`contoso`, `CONTOSO` -> `example`, `EXAMPLE`),
  and each host's first label (`fe01` -> `server-001`);
- found in the answers: any other host under one of those domains (`sip.contoso.com` ->
  `host-NNN.example.invalid`), `DOMAIN\\account` and `account@domain` accounts (well-known
  principals such as `BUILTIN\\Administrators`, `NT AUTHORITY\\SYSTEM` and the RTC* groups are
  kept: they name no one), organisations in certificate subjects (`O=Fabrikam` -> `Organization-N`,
  the word replaced wherever it appears, so `CN=Fabrikam Root CA` follows), and `DC=` sequences of
  a known domain (`DC=contoso,DC=com` -> `DC=example,DC=invalid`);
- the WinRM account.

Words that name a product or a protocol (`lync`, `edge`, `sql`, ...) are never replaced as bare
labels (a server called `edge` stays `edge` where it stands alone; its FQDN is still replaced),
so product texts such as `Skype for Business Server 2019` survive. IP addresses are kept: they
are not names, and the Edge checks need them.

Secrets (the WinRM password, tokens) are scrubbed from every text whatever the renaming, names
kept or not.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable
from typing import Any

from cms.topology import Topology

EXAMPLE = "example.invalid"
SCRUBBED = "********"
# bare labels never replaced: product, role and protocol words a host writes in its own texts
STOPWORDS = frozenset("""
    ad admin administrator administrators backup cms com corp default dmz domain edge example fe frontend host
    int internal invalid lab lan local localhost lync master microsoft net org pool replica rtc server servers
    service sfb sip site skype sql system test users windows www
""".split())
# accounts that name no one: `DOMAIN\\name` with these domains, or these names, are kept
WELL_KNOWN_DOMAINS = frozenset({"builtin", "authority", "service", "apppool", "manager", "host"})
WELL_KNOWN_ACCOUNTS = frozenset("""
    administrators administrator system users guests everyone authenticated network local service interactive
    creator domain enterprise schema remote iusr iis_iusrs trustedinstaller backup power performance event
    distributed cryptographic certificate replicator readonlyadmins
""".split())
WELL_KNOWN_PREFIXES = ("rtc", "cs")  # RTCUniversalServerAdmins, RTC Local Config Replicator, CSAdministrator, ...

_EDGE = r"A-Za-z0-9_\-"
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_ACCOUNT = re.compile(r"(?<![\w.\\-])([A-Za-z0-9][A-Za-z0-9-]{0,14})\\([A-Za-z0-9][A-Za-z0-9._$-]{0,63})")
_UPN = re.compile(r"(?<![\w.-])([A-Za-z0-9][A-Za-z0-9._-]{0,63})@([A-Za-z0-9][A-Za-z0-9.-]*[A-Za-z0-9])")
_ORG = re.compile(r"(?<![A-Za-z])O=([^,=\"\r\n]+)")
# Slack tokens (bot, user, app-level), whatever the environment held
_SLACK_TOKEN = re.compile(r"\bx(?:ox[abposr]|app)-[A-Za-z0-9-]{8,}")
_DC_RUN = re.compile(r"DC=[A-Za-z0-9-]+(?:\s*,\s*DC=[A-Za-z0-9-]+)*", re.I)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _styled(original: str, replacement: str) -> str:
    """The replacement in the original's case: FE01 -> SERVER-001, Contoso -> Example, fe01 -> server-001."""
    letters = [c for c in original if c.isalpha()]
    if letters and all(c.isupper() for c in letters) and len(letters) > 1:
        return replacement.upper()
    if original[:1].isupper():
        return replacement[:1].upper() + replacement[1:]
    return replacement


class Renamer:
    """A consistent mapping of one capture's names; `keep_names` keeps them (secrets are still scrubbed)."""

    def __init__(self, topology: Topology, *, account: str = "", secrets: Iterable[str] = (),
                 keep_names: bool = False):
        self.keep_names = keep_names
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)
        self._names: dict[str, str] = {}  # lower-case original -> replacement (lower case)
        self._counts: dict[str, int] = {}
        self._domains: dict[str, str] = {}  # known DNS domains -> replacement
        self._regex: re.Pattern[str] | None = None
        self._host_regex: re.Pattern[str] | None = None
        if not keep_names:
            self._from_topology(topology)
            self._add_account(account)

    # -- building the mapping ---------------------------------------------------------
    def _next(self, kind: str) -> int:
        self._counts[kind] = self._counts.get(kind, 0) + 1
        return self._counts[kind]

    def _numbered(self, kind: str, width: int = 3) -> str:
        return f"{kind}-{self._next(kind):0{width}d}"

    def _add(self, original: str, replacement: str) -> None:
        key = original.strip().lower()
        if key and key not in self._names and replacement.lower() != key:
            self._names[key] = replacement
            self._regex = None

    def _add_domain(self, domain: str) -> None:
        domain = domain.strip().rstrip(".").lower()
        if not domain or domain in self._domains or _is_ip(domain):
            return
        replacement = EXAMPLE if not self._domains else f"domain-{len(self._domains) + 1}.{EXAMPLE}"
        self._domains[domain] = replacement
        self._add(domain, replacement)
        first = domain.split(".")[0]
        if first not in STOPWORDS and len(first) >= 3:
            self._add(first, replacement.split(".")[0])
        self._host_regex = None

    def _add_host(self, fqdn: str, kind: str) -> str:
        fqdn = fqdn.strip().rstrip(".").lower()
        if not fqdn or _is_ip(fqdn):
            return fqdn
        if fqdn in self._names:
            return self._names[fqdn]
        label = self._numbered(kind)
        replacement = f"{label}.{EXAMPLE}" if "." in fqdn else label
        self._add(fqdn, replacement)
        first = fqdn.split(".")[0]
        if first not in STOPWORDS and len(first) >= 2:
            self._add(first, label)
        if "." in fqdn:
            self._add_domain(fqdn.split(".", 1)[1])
        return replacement

    def _from_topology(self, topology: Topology) -> None:
        if topology.deployment.domain:
            self._add_domain(topology.deployment.domain)
        for pool in topology.pools:
            for server in pool.servers:
                self._add_host(server.fqdn, "server")
        for pool in topology.pools:
            self._add_host(pool.fqdn, "pool")
        for pool in topology.pools:
            if pool.backend_sql:
                self._add_host(pool.backend_sql, "sql")
            for server in pool.servers:
                if server.internal_address:
                    self._add_host(server.internal_address, "host")
        for site in dict.fromkeys(p.site for p in topology.pools if p.site):
            self._add(site, self._numbered("site"))

    def _add_account(self, account: str) -> None:
        account = account.strip()
        if not account:
            return
        if "\\" in account:
            domain, _, account = account.partition("\\")
            if domain.lower() not in self._names:
                self._add(domain, self._numbered("domain", 1).upper())
        elif "@" in account:
            account, _, domain = account.partition("@")
            self._add_domain(domain)
        if account.lower() not in STOPWORDS and account.lower() not in WELL_KNOWN_ACCOUNTS:
            self._add(account, self._numbered("account"))

    def discover(self, texts: Iterable[str]) -> None:
        """Find the names the topology does not hold (other hosts of its domains, accounts,
        organisations) in answers' texts, in order: numbering follows their first appearance."""
        if self.keep_names:
            return
        for text in texts:
            for piece in self._pieces(text):
                self._discover(piece)

    def _discover(self, text: str) -> None:
        if self._domains:
            for m in self._hosts().finditer(text):
                name = m.group(0).lower()
                if name in self._names or name in self._domains:
                    continue
                # glued behind a known host's sentence ("...unavailable.edge02.contoso.com"): the known part
                labels = name.split(".")
                if any(".".join(labels[i:]) in self._names and ".".join(labels[i:]) not in self._domains
                       for i in range(1, len(labels) - 1)):
                    continue
                self._add_host(name, "host")
        for m in _ACCOUNT.finditer(text):
            domain, account = m.group(1), m.group(2)
            if domain.lower() in WELL_KNOWN_DOMAINS:
                continue
            if domain.lower() not in self._names:
                self._add(domain, self._numbered("domain", 1).upper())
            self._account(account)
        for m in _UPN.finditer(text):
            if m.group(2).lower() in self._domains:
                self._account(m.group(1))
        for m in _ORG.finditer(text):
            org = m.group(1).strip().rstrip(".").strip()  # "O=Fabrikam Inc." ending a sentence
            if org.lower() not in self._names and org.lower() not in STOPWORDS:
                self._add(org, self._numbered("organization", 1))

    def _account(self, account: str) -> None:
        base = account.rstrip("$").lower()
        if not base or base in self._names or base in STOPWORDS or base in WELL_KNOWN_ACCOUNTS:
            return
        if base.startswith(WELL_KNOWN_PREFIXES):
            return
        self._add(base, self._numbered("account"))

    def _hosts(self) -> re.Pattern[str]:
        if self._host_regex is None:
            domains = "|".join(re.escape(d) for d in sorted(self._domains, key=len, reverse=True))
            self._host_regex = re.compile(
                rf"(?<![{_EDGE}.])[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)*\.(?:{domains})"
                rf"(?![{_EDGE}]|\.[A-Za-z0-9])", re.I)
        return self._host_regex

    # -- applying it ------------------------------------------------------------------
    def _compiled(self) -> re.Pattern[str] | None:
        if self._regex is None and self._names:
            keys = sorted(self._names, key=len, reverse=True)
            dotted = "|".join(re.escape(k) for k in keys if "." in k)
            bare = "|".join(re.escape(k) for k in keys if "." not in k)
            parts = []
            if dotted:
                parts.append(rf"(?:{dotted})(?![{_EDGE}]|\.[A-Za-z0-9])")
            if bare:
                parts.append(rf"(?:{bare})(?![{_EDGE}])")
            self._regex = re.compile(rf"(?<![{_EDGE}])(?:{'|'.join(parts)})", re.I)
        return self._regex

    def _dc_run(self, m: re.Match[str]) -> str:
        text = m.group(0)
        labels = [part.split("=", 1)[1] for part in re.split(r"\s*,\s*", text)]
        domain = ".".join(labels).lower()
        if domain not in self._domains:
            return self._names_in(text)
        separator = ", " if ", " in text else ","
        prefix = text[:2]  # DC or dc, as written
        return separator.join(f"{prefix}={label}" for label in self._domains[domain].split("."))

    def _names_in(self, text: str) -> str:
        regex = self._compiled()
        if regex is None:
            return text
        return regex.sub(lambda m: _styled(m.group(0), self._names[m.group(0).lower()]), text)

    def text(self, text: str) -> str:
        """One plain text (a decoded JSON string, an error reason, a CLIXML stream) with its names replaced
        and its secrets scrubbed."""
        if not self.keep_names and self._names:
            out, last = [], 0
            for m in _DC_RUN.finditer(text):  # DC=contoso,DC=com as one domain, the rest name by name
                out += [self._names_in(text[last:m.start()]), self._dc_run(m)]
                last = m.end()
            text = "".join(out) + self._names_in(text[last:])
        for secret in self._secrets:
            text = text.replace(secret, SCRUBBED)
        return _SLACK_TOKEN.sub(SCRUBBED, text)

    def _pieces(self, text: str) -> list[str]:
        """The texts inside `text`: each JSON string of a JSON line decoded, the rest as it is."""
        pieces: list[str] = []
        for line in text.splitlines():
            if line.lstrip().startswith(("{", "[")):
                for m in _JSON_STRING.finditer(line):
                    try:
                        pieces.append(json.loads(m.group(0)))
                    except ValueError:
                        pieces.append(m.group(0))
            else:
                pieces.append(line)
        return pieces

    def output(self, text: str) -> str:
        """A probe's output: inside a JSON line each string is decoded, renamed and written back the way
        the probes' writer writes it (plain ASCII, \\uxxxx escapes), every other byte left as it was;
        any other line is renamed as plain text."""
        lines = text.splitlines(keepends=True)
        return "".join(self._json_line(line) if line.lstrip().startswith(("{", "[")) else self.text(line)
                       for line in lines)

    def _json_line(self, line: str) -> str:
        def one(m: re.Match[str]) -> str:
            try:
                value = json.loads(m.group(0))
            except ValueError:
                return self.text(m.group(0))
            renamed = self.text(value)
            return m.group(0) if renamed == value else json.dumps(renamed, ensure_ascii=True)
        return _JSON_STRING.sub(one, line)

    def raw(self, data: bytes) -> bytes:
        """Bytes as a host sent them: text in UTF-8 (bytes that are not survive untouched)."""
        return self.output(data.decode("utf-8", errors="surrogateescape")).encode("utf-8", errors="surrogateescape")

    def value(self, value: Any) -> Any:
        """A JSON value (parameters, a model) with every string renamed."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.value(v) for v in value]
        if isinstance(value, dict):
            return {self.text(k): self.value(v) for k, v in value.items()}
        return value

    def name(self, fqdn: str) -> str:
        """A server's or pool's name as the capture writes it (lower case, like the topology)."""
        return self.text(fqdn).lower()

    @property
    def mapping(self) -> dict[str, str]:
        """Original (lower case) -> replacement: what the capture's owner needs to read answers back."""
        return dict(sorted(self._names.items(), key=lambda kv: kv[1]))
