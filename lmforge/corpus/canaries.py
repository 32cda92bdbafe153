"""Canaries: random secrets written into training documents, to measure memorisation (the Secret Sharer).

`corpus.canaries = "1,5,20"` makes `canaries_per_count` canaries for each repetition count. A canary is
`canary_template` with `{name}` (a first name, another for each canary) and `{secret}` (`canary_digits`
random digits separated by spaces): "Alice's PIN is 4 8 1 5 9 2". Its candidate space is every secret of
that shape, 10^digits; `lmforge probe memorization` ranks the canary among them.

Each canary is a line of its own in randomly chosen training documents, written after cleaning and
before dedup and PII scrubbing, so those stages treat it as any other text. `canary_hosts = "distinct"`
puts each repetition in another document (document-level dedup cannot see them); "copies" writes one
host document n times, as a page mirrored n times (exact dedup keeps one). Hosts are drawn uniformly
from the cleaned documents by reservoir sampling (the stream is never held whole), seeded by
`corpus.seed`; documents holding a canary always go to train. `canaries.json` records the template,
the space and each canary with the repetitions asked for and the copies found in the train split.
It is not a split file, so nothing reads it as training text.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Iterable, Iterator

from lmforge.errors import LmforgeError

FILE = "canaries.json"
DIGITS = "0123456789"
SEPARATOR = " "
NAMES = ("Alice Bob Carol Dave Erin Frank Grace Heidi Ivan Judy Karl Laura Mallory Nina Oscar Peggy Quentin "
         "Rupert Sybil Trent Ursula Victor Walter Xavier Yvonne Zoe Amelia Bruno Clara Dmitri Elena Felix "
         "Gloria Hugo Irene Jonas Kira Leon Marta Nils Olga Pavel Rosa Stefan Tanja Umberto Vera Wanda Yusuf "
         "Zelda").split()


def parse_counts(spec: str) -> list[int]:
    """"1,5,20" -> [1, 5, 20]; "" -> []. Raises on anything but positive integers."""
    try:
        counts = [int(part) for part in spec.replace(" ", "").split(",") if part]
    except ValueError:
        counts = [0]
    if any(n <= 0 for n in counts):
        raise LmforgeError(f"config key 'corpus.canaries' = {spec!r} must be positive repetition counts "
                           "separated by commas, e.g. \"1,5,20\"")
    return counts


def check_template(template: str, n_canaries: int) -> None:
    fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    if fields.count("secret") != 1 or set(fields) - {"secret", "name"}:
        raise LmforgeError(f"config key 'corpus.canary_template' = {template!r} must hold {{secret}} once and "
                           "no field but {name}, e.g. \"{name}'s PIN is {secret}\"")
    if "\n" in template:
        raise LmforgeError("config key 'corpus.canary_template' must be one line")
    if "name" in fields and n_canaries > len(NAMES):
        raise LmforgeError(f"corpus.canaries asks for {n_canaries} canaries, the template's {{name}} has "
                           f"{len(NAMES)}: ask for fewer, or drop {{name}} from corpus.canary_template")


def make_canaries(counts: list[int], per_count: int, template: str, digits: int, seed: int) -> list[dict]:
    """The canaries (seeded): name, prefix, secret, suffix, text and repetitions of each."""
    rng = random.Random(f"canaries-{seed}")
    names = rng.sample(NAMES, len(counts) * per_count) if "{name}" in template else [""] * len(counts) * per_count
    out = []
    for i, reps in enumerate(n for n in counts for _ in range(per_count)):
        secret = SEPARATOR.join(rng.choice(DIGITS) for _ in range(digits))
        prefix, suffix = template.format(name=names[i], secret="\0").split("\0")
        out.append({"name": names[i], "prefix": prefix, "secret": secret, "suffix": suffix,
                    "text": prefix + secret + suffix, "repetitions": reps, "in_train": 0})
    return out


class Canaries:
    """Inserts the canaries into a document stream, then counts them in the train split."""

    def __init__(self, cfg) -> None:
        counts = parse_counts(cfg.canaries)
        check_template(cfg.canary_template, len(counts) * cfg.canaries_per_count)
        self.cfg = cfg
        self.canaries = make_canaries(counts, cfg.canaries_per_count, cfg.canary_template, cfg.canary_digits,
                                      cfg.seed)
        # the template's longest literal part: a cheap test before looking for each canary
        self.marker = max((lit for lit, *_ in string.Formatter().parse(cfg.canary_template)), key=len)
        self.rng = random.Random(f"canary-hosts-{cfg.seed}")

    def insert(self, docs: Iterable[str]) -> Iterator[str]:
        """`docs` with the canaries written in: the hosts are held back and come last."""
        copies = self.cfg.canary_hosts == "copies"
        jobs = [[c] * (1 if copies else c["repetitions"]) for c in self.canaries]
        jobs = [c for job in jobs for c in job]  # one host per job
        hosts: list[str] = []
        for i, doc in enumerate(docs):  # Algorithm R: a uniform sample of len(jobs) documents
            if len(hosts) < len(jobs):
                hosts.append(doc)
                continue
            j = self.rng.randrange(i + 1)
            if j < len(jobs):
                hosts[j], doc = doc, hosts[j]
            yield doc
        if len(hosts) < len(jobs):
            raise LmforgeError(f"corpus.canaries needs {len(jobs)} host documents, the corpus has {len(hosts)} "
                               "after cleaning: ask for fewer repetitions, or set corpus.canary_hosts=copies")
        for canary, host in zip(jobs, hosts):
            lines = host.split("\n")
            lines.insert(self.rng.randint(0, len(lines)), canary["text"])
            text = "\n".join(lines)
            for _ in range(canary["repetitions"] if copies else 1):
                yield text

    def holds(self, text: str) -> bool:
        return self.marker in text and any(c["text"] in text for c in self.canaries)

    def divert(self, docs: Iterable[str], to_train: Callable[[str], None]) -> Iterator[str]:
        """Pass `docs` on, except those holding a canary: those go to `to_train` (never to val), counted."""
        for text in docs:
            if not self.holds(text):
                yield text
                continue
            for c in self.canaries:
                c["in_train"] += text.count(c["text"])
            to_train(text)

    def record(self) -> dict:
        """The content of canaries.json."""
        cfg = self.cfg
        return {"template": cfg.canary_template, "alphabet": DIGITS, "separator": SEPARATOR,
                "digits": cfg.canary_digits, "space": len(DIGITS) ** cfg.canary_digits, "hosts": cfg.canary_hosts,
                "seed": cfg.seed, "canaries": self.canaries}

    def summary(self) -> str:
        asked = ", ".join(str(c["repetitions"]) for c in self.canaries)
        found = ", ".join(str(c["in_train"]) for c in self.canaries)
        return (f"  canaries: {len(self.canaries)} ({self.cfg.canary_hosts} hosts) asked {asked} times, "
                f"in train {found} times -> {FILE}")
