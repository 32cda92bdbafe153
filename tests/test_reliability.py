"""The reliability suite: every subcommand against a table of bad inputs and interruptions.

For each case: a non-zero exit, exactly one line on stderr starting `lmforge: error:` that names the
path or key at fault, no traceback, and the output folder byte for byte as it was (hashed before and
after). Full-disk and read-only cases use a small tmpfs (they need root to mount it, and skip otherwise).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_english, make_shards

REPO = Path(__file__).resolve().parents[1]
TINY = ("[model]\nkind = \"gpt\"\ncontext_len = 32\nn_layer = 1\nn_head = 2\nd_model = 16\n\n"
        "[train]\nmax_steps = 4\nbatch_size = 4\neval_every = 2\neval_batches = 1\nsave_every = 2\n"
        "keep_last = 5\nprogress = false\n\n[schedule]\nwarmup_steps = 1\n\n[runtime]\ndevice = \"cpu\"\n")


def tree_hash(path: Path) -> str:
    """A digest of a file or folder (names and bytes), or "absent"."""
    path = Path(path)
    if not path.exists():
        return "absent"
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        digest.update(str(f.relative_to(path.parent)).encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()


def refused(cli, args, needle: str, *watch: Path) -> str:
    before = {w: tree_hash(w) for w in watch}
    code, _, err = cli(*args)
    lines = err.strip().splitlines()
    assert code != 0 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("lmforge: error:") and needle in lines[0], err
    for w in watch:
        assert tree_hash(w) == before[w], f"{w} changed"
    return lines[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A corpus, a char tokenizer, shards, a 4-step GPT run and a classifier fine-tuned from it."""
    from lmforge.cli import main
    from lmforge.tokenizer import TokenizerConfig

    root = tmp_path_factory.mktemp("reliability")
    shards = make_shards(root, make_english(120, seed=2), 12, TokenizerConfig(kind="char", vocab_size=100))
    (root / "tiny.toml").write_text(TINY)
    assert main(["pretrain", "--config", str(root / "tiny.toml"), "--data", str(shards), "--out",
                 str(root / "run")]) == 0
    rows = [("the model reads good text", "pos"), ("the data decays bad text", "neg")] * 8
    (root / "labeled.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{lab}\n" for t, lab in rows))
    assert main(["finetune", "--from", str(root / "run"), "--train", str(root / "labeled.tsv"), "--dev",
                 str(root / "labeled.tsv"), "--out", str(root / "clf"), "--max_steps", "2", "--quiet"]) == 0
    return {"root": root, "corpus": root / "corpus", "tok": root / "tok", "shards": shards, "run": root / "run",
            "clf": root / "clf", "labeled": root / "labeled.tsv", "config": root / "tiny.toml"}


def copy_run(world, tmp_path, name: str = "run") -> Path:
    dst = tmp_path / name
    shutil.copytree(world[name], dst)
    return dst


def latest(run: Path) -> Path:
    return sorted((run / "checkpoints").glob("step-*"))[-1]


# ----------------------------------------------------------------------------------------------------
# Damaged files: one line naming the file, nothing changed


def test_flipped_bytes_in_weights_are_caught_by_every_reader(world, tmp_path, cli):
    run = copy_run(world, tmp_path)
    weights = latest(run) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in a tensor: the file still parses
    weights.write_bytes(bytes(data))
    for args in (("generate", run, "--prompt", "the", "--checkpoint", "latest", "--max-new-tokens", "2"),
                 ("eval", run, "--checkpoint", "latest"),
                 ("export", run, "--checkpoint", "latest", "--out", tmp_path / "hf"),
                 ("pretrain", "--resume", run, "--set", "train.max_steps=6")):
        line = refused(cli, args, "model.safetensors does not match the checksum", run, tmp_path / "hf")
        assert "step-000002" in line  # the newest intact checkpoint to fall back to
    code, out, err = cli("pretrain", "--resume", run, "--set", "train.max_steps=6", "--skip-damaged")
    assert code == 0 and "skipping damaged checkpoint" in out + err, err


@pytest.mark.parametrize("damage,needle", [
    ("truncate", "model.safetensors does not match the checksum"),
    ("delete", "model.safetensors is missing"),
    ("garbage-state", "trainer_state.pt does not match the checksum"),
])
def test_damaged_checkpoint_files(world, tmp_path, cli, damage, needle):
    run = copy_run(world, tmp_path)
    ckpt = latest(run)
    if damage == "truncate":
        (ckpt / "model.safetensors").write_bytes((ckpt / "model.safetensors").read_bytes()[:100])
    elif damage == "delete":
        (ckpt / "model.safetensors").unlink()
    else:
        (ckpt / "trainer_state.pt").write_bytes(b"not a torch file at all")
    refused(cli, ("pretrain", "--resume", run, "--set", "train.max_steps=6"), needle, run)


def test_a_checkpoint_saved_before_checksums_still_refuses_garbage(world, tmp_path, cli):
    run = copy_run(world, tmp_path)
    ckpt = latest(run)
    meta = json.loads((ckpt / "meta.json").read_text())
    del meta["sha256"]
    (ckpt / "meta.json").write_text(json.dumps(meta))
    (ckpt / "model.safetensors").write_bytes(b"\0" * 64)
    refused(cli, ("eval", run, "--checkpoint", "latest"), "unreadable weights", run)


def test_bad_run_files(world, tmp_path, cli):
    clf = copy_run(world, tmp_path, "clf")
    (clf / "label_map.json").write_text("{not json")
    refused(cli, ("classify", clf, "some text"), "label_map.json: not valid JSON", clf)
    run = copy_run(world, tmp_path)
    shutil.rmtree(run / "checkpoints")
    refused(cli, ("pretrain", "--resume", run, "--set", "train.max_steps=6"),
            "its checkpoints/ holds no checkpoint but metrics.jsonl reaches step 4", run)


# ----------------------------------------------------------------------------------------------------
# Bad input: the table


def _cases(world, tmp_path) -> list[tuple[str, tuple, str, tuple]]:
    """(name, args, needle, folders that must not change)."""
    root = tmp_path
    binary = root / "blob.txt"
    binary.write_bytes(b"\0\1\2" * 100)
    unterminated = root / "u.csv"
    unterminated.write_text('text\n"a document that never closes its quote\nmore\n')
    corpus_copy = root / "corpus"
    shutil.copytree(world["corpus"], corpus_copy)
    shard = next(corpus_copy.glob("train-*.jsonl.zst"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    header = root / "h.tsv"
    header.write_text("review body\tstars\n" + "".join(f"a long fine review {i}\t{i % 2}\n" for i in range(8)))
    out = root / "out"
    run, clf, shards = world["run"], world["clf"], world["shards"]
    return [
        ("decode negative id", ("tokenizer", "decode", world["tok"], "5", "-3"), "token id -3 is out of range", ()),
        ("decode id past the vocabulary", ("tokenizer", "decode", world["tok"], "99999"), "token id 99999", ()),
        ("eval_batches -1", ("pretrain", "--config", world["config"], "--data", shards, "--out", out, "--set",
                             "train.eval_batches=-1"), "train.eval_batches", (out,)),
        ("context_len 0", ("pretrain", "--config", world["config"], "--data", shards, "--out", out, "--set",
                           "model.context_len=0"), "model.context_len", (out,)),
        ("min_chars -5", ("corpus", "build", "--input", binary, "--out", out, "--set", "corpus.min_chars=-5"),
         "corpus.min_chars", (out,)),
        ("binary classify input", ("classify", clf, "--input", binary), "blob.txt: binary file", (clf,)),
        ("plot unknown format", ("plot", run, "--out", root / "x.xyz"), "--out", ()),
        ("unterminated CSV quote", ("corpus", "build", "--input", unterminated, "--out", out, "--quiet"),
         "u.csv:", (out,)),
        ("truncated corpus shard", ("tokenizer", "train", "--corpus", corpus_copy, "--kind", "char", "--out", out,
                                    "--quiet"), "cannot decompress", (out, corpus_copy)),
        ("truncated shard into shards build", ("shards", "build", "--corpus", corpus_copy, "--tokenizer",
                                               world["tok"], "--out", out, "--quiet"), "cannot decompress",
         (out,)),
        ("unrecognised header", ("finetune", "--from", run, "--train", header, "--dev", header, "--out", out,
                                 "--quiet"), "looks like a header", (out,)),
        ("a corpus given as shards", ("pretrain", "--config", world["config"], "--data", world["corpus"], "--out",
                                      out), "is a corpus folder, not shards", (out,)),
        ("existing output", ("corpus", "build", "--input", binary, "--out", run), "already exists", (run,)),
        ("resume what is not a run", ("pretrain", "--resume", root), "has no config.toml", ()),
    ]


def test_the_table_of_bad_inputs(world, tmp_path, cli):
    for name, args, needle, watch in _cases(world, tmp_path):
        try:
            refused(cli, args, needle, *watch)
        except AssertionError as e:
            raise AssertionError(f"case {name!r}: {e}") from None


# ----------------------------------------------------------------------------------------------------
# Two writers, one folder; interrupted writers


def _hold(path: Path) -> subprocess.Popen:
    """Another process holding the lock of `path` until killed."""
    code = ("import sys, time; from lmforge.atomic import locked\n"
            "with locked(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_with_the_holders_pid(world, tmp_path, cli):
    run = copy_run(world, tmp_path)
    holder = _hold(run)
    try:
        line = refused(cli, ("pretrain", "--resume", run, "--set", "train.max_steps=6"),
                       f"being written by another lmforge process (pid {holder.pid})", run)
        assert str(run) in line
        refused(cli, ("pretrain", "--config", world["config"], "--data", world["shards"], "--out", run,
                      "--overwrite"), f"pid {holder.pid}", run)
        other = tmp_path / "corpus-x"
        held_corpus = _hold(other)
        try:
            refused(cli, ("corpus", "build", "--input", world["labeled"], "--out", other, "--quiet", "--set",
                          "corpus.text_column=sentence"), f"pid {held_corpus.pid}", other)
        finally:
            held_corpus.kill()
    finally:
        holder.kill()
        holder.wait()
    assert cli("pretrain", "--resume", run, "--set", "train.max_steps=6")[0] == 0  # the lock died with it


def test_stale_leftovers_of_killed_writers_are_cleaned(world, tmp_path, cli):
    run = copy_run(world, tmp_path)
    (run / "checkpoints" / ".step-000006.abc.tmp").mkdir()  # a save killed half-way
    half = run / "checkpoints" / ".step-000002.deleting"  # a prune killed half-way: out of the listing
    half.mkdir()
    (half / "meta.json").write_text("{}")
    (tmp_path / ".run.xyz.tmp").mkdir()  # a folder creation killed half-way
    assert cli("pretrain", "--resume", run, "--set", "train.max_steps=6")[0] == 0
    assert not list((run / "checkpoints").glob(".*")) and not (tmp_path / ".run.xyz.tmp").exists()


@pytest.mark.parametrize("signum,code", [(2, 130), (15, 143)])
def test_a_signal_saves_then_exits_non_zero(world, tmp_path, signum, code):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "lmforge", "pretrain", "--config", world["config"], "--data", world["shards"],
           "--out", out, "--set", "train.max_steps=100000", "--set", "train.save_every=100000"]
    proc = subprocess.Popen([str(c) for c in cmd], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 60
    while not (out / "metrics.jsonl").is_file() or not (out / "metrics.jsonl").read_text().strip():
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert "stopped by a signal (saved)" in stdout + stderr and latest(out).is_dir()


def test_relative_data_path_resumes_from_another_folder(world, tmp_path):
    start, elsewhere = tmp_path / "a", tmp_path / "b"
    start.mkdir()
    elsewhere.mkdir()
    shutil.copytree(world["shards"], start / "shards")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    first = [sys.executable, "-m", "lmforge", "pretrain", "--config", str(world["config"]), "--data", "shards",
             "--out", str(tmp_path / "run"), "--set", "train.max_steps=2"]
    assert subprocess.run(first, cwd=start, env=env, capture_output=True).returncode == 0
    again = [sys.executable, "-m", "lmforge", "pretrain", "--resume", str(tmp_path / "run"), "--set",
             "train.max_steps=4"]
    proc = subprocess.run(again, cwd=elsewhere, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# ----------------------------------------------------------------------------------------------------
# Full disk and read-only: a small tmpfs


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)],
                                           capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_is_one_line_and_loses_nothing(world, small_disk, cli):
    big = small_disk / "filler"
    text = "\n\n".join(make_english(3000, seed=5))  # more than the 600 kB disk holds once compressed and split
    (world["root"] / "big.txt").write_text(text)
    refused(cli, ("corpus", "build", "--input", world["root"] / "big.txt", "--out", small_disk / "c", "--quiet",
                  "--set", "corpus.format=jsonl.gz", "--set", "corpus.dedup_near=false", "--set",
                  "corpus.docs_per_shard=1"), "No space left on device", small_disk / "c")
    assert not [p for p in small_disk.iterdir() if p.name != ".c.lock"]  # no temporary folder left behind
    run = small_disk / "run"
    shutil.copytree(world["run"], run)
    with big.open("wb") as f:  # fill the rest of the disk
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    listed = sorted(p.name for p in (run / "checkpoints").iterdir())
    refused(cli, ("pretrain", "--resume", run, "--set", "train.max_steps=6"), "No space left on device")
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if not p.name.startswith(".")) == listed
    big.unlink()  # space again: the same command now works
    assert cli("pretrain", "--resume", run, "--set", "train.max_steps=6")[0] == 0


def test_a_read_only_folder_is_one_line(world, small_disk, cli):
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    refused(cli, ("shards", "build", "--corpus", world["corpus"], "--tokenizer", world["tok"], "--out",
                  small_disk / "s", "--quiet"), "Read-only file system")
