"""PII scrubbing: emails -> <EMAIL>, IP addresses -> <IP>, phone numbers -> <PHONE>.

The patterns are deliberately narrow: version numbers (3.11.2, v1.2.3.4), years, dates, prices and
plain numbers must survive, so a phone number needs phone structure and a phone's digit count, and an
IP address must parse as one and not follow the word "version".
"""

from __future__ import annotations

import ipaddress
import re

from lmforge.corpus.clean import Stage

EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                   r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}(?![\w@])")
IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
PHONE = re.compile(r"(?<![\w+:/-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?|\d{1,4}[ .-])"
                   r"(?:\d{2,4}[ .-]){0,3}\d{2,4}(?![\w:/]|[.-]\d)")
_DATE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}\b")
_VERSION_BEFORE = re.compile(r"(?i)\b(?:version|release|ver\.?|v)\s*$")


def _ipv4(m: re.Match) -> str:
    text = m.group()
    if _VERSION_BEFORE.search(m.string, max(0, m.start() - 10), m.start()):
        return text
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return text
    return "<IP>"


def _ipv6(m: re.Match) -> str:
    text = m.group()
    if not any(c.isdigit() for c in text) or sum(1 for g in text.split(":") if g) < 2 and text != "::1":
        return text  # "a::b" in C++ or Rust paths, times like 12:30:45 fail to parse below
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return text
    return "<IP>"


def _phone(m: re.Match) -> str:
    text = m.group()
    digits = sum(c.isdigit() for c in text)
    if _DATE.search(text):
        return text
    if text.startswith("+"):
        return "<PHONE>" if 8 <= digits <= 15 else text
    # Without a country code: a national number of 10-11 digits in at least two groups.
    groups = [g for g in re.split(r"[ .()-]+", text) if g]
    return "<PHONE>" if 10 <= digits <= 11 and len(groups) >= 2 else text


class ScrubPii(Stage):
    name = "scrub_pii"

    def __call__(self, text: str) -> str:
        if "@" in text:
            text, n = EMAIL.subn("<EMAIL>", text)
            self._count("emails", n)
        if "." in text:
            text = self._sub(IPV4, _ipv4, "ips", text)
        if ":" in text:
            text = self._sub(IPV6, _ipv6, "ips", text)
        return self._sub(PHONE, _phone, "phones", text)

    def _sub(self, pattern: re.Pattern, check, kind: str, text: str) -> str:
        def repl(m: re.Match) -> str:
            out = check(m)
            if out != m.group():
                self._count(kind)
            return out

        return pattern.sub(repl, text)
