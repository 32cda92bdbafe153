"""The README is a test: its set-up command is what CI runs, and its examples run, in order.

Every ```bash block after "## The pipeline" runs, in README order, in a scratch folder, so a later example
uses what an earlier one made. There are two folders, two tests that `pytest -n 2` can run on its two
workers: the sections in SECOND (fill-mask, classify, seq2seq, NER/QA, compress) run in the second, after
the sections they build on (BOTH, run in both folders); every other section runs in the first. A block
preceded by an HTML comment `<!-- not run: REASON -->` is skipped (GPU, several machines); ```console
and ```python blocks are shown output or snippets, not run (python blocks are run when preceded by
`<!-- run -->`).

The examples assume a user's own files; the test writes small stand-ins first: notes.txt (lines of
text), sst2/train.tsv and sst2/dev.tsv (GLUE layout: sentence<TAB>label), reviews.tsv, cmn.txt
(Tatoeba layout: English<TAB>Chinese<TAB>attribution), conll/ (CoNLL-2003 layout) and squad/ (SQuAD v1.1).
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(r"(<!--[^>]*-->\s*)?```(\w+)\n(.*?)```", re.S)
HEADING = re.compile(r"^#{2,3} (.+)$", re.M)
SECOND = ("lmforge fill-mask", "lmforge classify", "Sequence to sequence", "Named entities", "lmforge compress")
"""Sections (by the start of their heading) whose examples run in the second folder."""
BOTH = ("lmforge corpus build", "lmforge pretrain (BERT", "lmforge finetune")
"""Sections that both folders run: the second one's examples need their corpus, BERT and classifier, and
the first one's too (serve takes runs/sst2)."""


def blocks(after: str = "## Set up") -> list[tuple[str, str, str, str]]:
    """(section heading, language, marker comment, code) of each fenced block after the heading."""
    text = README.read_text(encoding="utf-8")
    text = text[text.index(after):]
    prose = BLOCK.sub(lambda m: " " * len(m.group(0)), text)  # headings outside the code blocks only
    heads = [(m.start(), m.group(1).strip()) for m in HEADING.finditer(prose)]
    return [(([h for pos, h in heads if pos < m.start()] or [""])[-1], m.group(2), (m.group(1) or "").strip(),
             m.group(3)) for m in BLOCK.finditer(text)]


def test_ci_runs_both_readme_commands():
    setup = README.read_text(encoding="utf-8").split("## Set up", 1)[1].split("\n## ", 1)[0]
    commands = [code.strip() for _, lang, code in BLOCK.findall(setup) if lang == "bash"]
    assert len(commands) == 2, "the README gives exactly two set-up commands"
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[0] in ci, ".ci/run must run the README's main job (quickstart) as written"
    assert commands[1] in ci, ".ci/run must run the README's test command"
    assert "[dev]" not in commands[0] and "[" not in commands[0].split("pip install -e")[1], \
        "the main job runs on a core install, without extras"


def runnable(group: str | None = None) -> list[tuple[str, str, str]]:
    """(section heading, language, code) of the blocks that run, in README order: all of them, or those of
    the "first" or the "second" folder."""
    out = []
    for heading, lang, marker, code in blocks("## The pipeline"):
        if "not run" in marker:
            continue
        second, both = heading.startswith(SECOND), heading.startswith(BOTH)
        if group == "first" and second or group == "second" and not (second or both):
            continue
        if lang == "bash" or (lang == "python" and marker == "<!-- run -->"):
            out.append((heading, lang, code))
    return out


def test_the_two_folders_run_every_example():
    headings = {h for h, _, _, _ in blocks("## The pipeline")}
    for name in SECOND + BOTH:
        assert any(h.startswith(name) for h in headings), f"no README section starts with {name!r}"
    first, second = runnable("first"), runnable("second")
    assert all(b in first or b in second for b in runnable())
    assert len(second) < len(runnable()) and len(first) < len(runnable())


def user_files(folder: Path) -> None:
    from conftest import make_english

    (folder / "notes.txt").write_text("\n".join(make_english(300, seed=3)) + "\n", encoding="utf-8")
    rng = random.Random(0)
    good, bad = ["charming", "moving", "brilliant", "warm"], ["dull", "bleak", "tedious", "flat"]
    filler = "the film story cast plot music and its ending feels".split()

    def rows(n: int) -> str:
        out = ["sentence\tlabel"]
        for _ in range(n):
            label = rng.randint(0, 1)
            words = rng.sample(filler, 5) + [rng.choice(good if label else bad)]
            rng.shuffle(words)
            out.append(f"{' '.join(words)} \t{label}")
        return "\n".join(out) + "\n"

    (folder / "sst2").mkdir()
    (folder / "sst2" / "train.tsv").write_text(rows(400))
    (folder / "sst2" / "dev.tsv").write_text(rows(60))
    (folder / "reviews.tsv").write_text(rows(20))
    english = dict(zip("I you we they love see like want the a big small red old new cat dog bird fish house car "
                       "book tea water station school city river tree today tomorrow here there quickly slowly "
                       "read write eat drink".split(),
                       "我 你 我们 他们 爱 看见 喜欢 想要 这 一个 大 小 红 老 新 猫 狗 鸟 鱼 房子 车 书 "
                       "茶 水 车站 学校 城市 河 树 今天 明天 这里 那里 快 慢 读 写 吃 喝".split()))
    lines = []
    for n in range(1000):
        words = rng.sample(list(english), rng.randint(4, 9))
        lines.append(f"{' '.join(words).capitalize()}.\t{''.join(english[w] for w in words)}。\tCC-BY 2.0 #{n}")
    (folder / "cmn.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    conll_and_squad(folder, rng)


def conll_and_squad(folder: Path, rng: random.Random) -> None:
    """conll/train.txt, conll/dev.txt (CoNLL-2003 layout, IOB1) and squad/train.json, squad/dev.json (v1.1)."""
    import json

    people, places = ["Alice Smith", "Bob", "Carol Jones", "Dave"], ["Paris", "New York", "London", "Rome"]

    def conll(n: int) -> str:
        lines = ["-DOCSTART- -X- -X- O", ""]
        for _ in range(n):
            person, place = rng.choice(people).split(), rng.choice(places).split()
            words = [*person, "flew", "to", *place, "today"]
            tags = ["I-PER"] * len(person) + ["O", "O"] + ["I-LOC"] * len(place) + ["O"]
            lines += [f"{w} NNP I-NP {t}" for w, t in zip(words, tags)] + [""]
        return "\n".join(lines) + "\n"

    def squad(n: int) -> str:
        paragraphs = []
        for i in range(n):
            person, place = rng.choice(people), rng.choice(places)
            context = f"The story is short. {person} lives in {place} now."
            paragraphs.append({"context": context, "qas": [{"id": f"q{i}", "question": f"Where does {person} live?",
                                                            "answers": [{"text": place,
                                                                         "answer_start": context.index(place)}]}]})
        return json.dumps({"version": "1.1", "data": [{"title": "toy", "paragraphs": paragraphs}]})

    for name, n in (("train", 200), ("dev", 40)):
        (folder / "conll").mkdir(exist_ok=True)
        (folder / "conll" / f"{name}.txt").write_text(conll(n))
        (folder / "squad").mkdir(exist_ok=True)
        (folder / "squad" / f"{name}.json").write_text(squad(n))


@pytest.mark.slow
@pytest.mark.parametrize("group", ["first", "second"])
def test_readme_examples_run_in_order(group, tmp_path):
    user_files(tmp_path)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=str(ROOT), MPLBACKEND="Agg", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    for i, (heading, lang, code) in enumerate(runnable(group)):
        cmd = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (f"README block {i} of the {group} folder ({heading}) failed "
                                      f"({done.returncode}):\n{code}\n"
                                      f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}")
