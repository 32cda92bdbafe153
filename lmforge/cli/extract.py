"""`lmforge ner`, `lmforge qa`: entities and answers from fine-tuned runs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lmforge.cli.args import add_checkpoint, add_device, load
from lmforge.errors import LmforgeError


def _write(lines: list[str], output: str | None, what: str) -> None:
    from lmforge.atomic import write_text

    if output:
        write_text(output, "".join(ln + "\n" for ln in lines))
        print(f"lmforge: wrote {len(lines)} {what} to {output}", file=sys.stderr)
    else:
        print("\n".join(lines))


def _text_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise LmforgeError(f"{path} not found")
    raw = path.read_bytes()
    if b"\0" in raw[:8192]:
        raise LmforgeError(f"{path}: binary file (NUL bytes): give texts, one per line (.txt) or .jsonl with \"text\"")
    lines = raw.decode("utf-8", errors="replace").splitlines()
    if path.suffix != ".jsonl":
        return [ln for ln in lines if ln.strip()]
    texts = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise LmforgeError(f"{path}:{n}: not JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise LmforgeError(f"{path}:{n}: needs a \"text\" string")
        texts.append(row["text"])
    return texts


def cmd_ner(args: argparse.Namespace) -> int:
    from lmforge.tasks.ner import ner

    if bool(args.texts) == bool(args.input):
        raise LmforgeError('ner needs texts (`lmforge ner RUN "text" ...`) or --input FILE, not both')
    run = load(args)
    texts = _text_lines(Path(args.input)) if args.input else args.texts
    found = ner(run, texts, args.aggregation, args.batch_size)
    if args.input or args.output or args.json:
        _write([json.dumps({"text": t, "entities": e}, ensure_ascii=False) for t, e in zip(texts, found)],
               args.output, "texts with their entities")
        return 0
    for text, entities in zip(texts, found):
        if len(texts) > 1:
            print(text)
        for e in entities or []:
            print(f"  {e['entity']:8s} {e['text']!r} [{e['start']}:{e['end']}] {e['score']:.3f}")
        if not entities:
            print("  (no entities)")
    return 0


def _qa_inputs(args: argparse.Namespace) -> tuple[list[str], list[str], list[str]]:
    """(ids, questions, contexts) from --question/--context or --input (SQuAD .json or .jsonl)."""
    if args.input:
        if args.question or args.context:
            raise LmforgeError("qa takes --question and --context, or --input FILE, not both")
        from lmforge.data.squad import read_qa

        data = read_qa(args.input, need_answers=False)
        print(f"lmforge: {data.describe()}", file=sys.stderr)
        return ([e.id for e in data.examples], [e.question for e in data.examples],
                [e.context for e in data.examples])
    if not args.question or args.context is None:
        raise LmforgeError('qa needs --question "..." and --context "..." (or --input FILE)')
    context = Path(args.context[1:]).read_text(encoding="utf-8") if args.context.startswith("@") else args.context
    return [str(i) for i in range(len(args.question))], list(args.question), [context] * len(args.question)


def cmd_qa(args: argparse.Namespace) -> int:
    from lmforge.tasks.qa import qa

    ids, questions, contexts = _qa_inputs(args)
    run = load(args)
    answers = qa(run, questions, contexts, args.batch_size)
    if args.input or args.output or args.json:
        _write([json.dumps({"id": i, "question": q, **a}, ensure_ascii=False)
                for i, q, a in zip(ids, questions, answers)], args.output, "answers")
        return 0
    for q, a in zip(questions, answers):
        if len(questions) > 1:
            print(q)
        print(f"  {a['answer']!r} (score {a['score']:.3f}, characters {a['start']}:{a['end']})")
    return 0


def register(sub) -> None:
    p = sub.add_parser("ner", help="named entities of texts, with a run fine-tuned by `finetune --task ner`")
    p.add_argument("run", help="fine-tuned run folder (or hf:DIR)")
    p.add_argument("texts", nargs="*", help="texts to tag")
    p.add_argument("--input", help="file of texts: .txt (one per line) or .jsonl with \"text\"")
    p.add_argument("--output", help="write JSON lines (text, entities) here (default: standard output)")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a listing")
    p.add_argument("--aggregation", choices=["first", "simple"], default="first",
                   help="first: a word takes its first token's tag (as trained); simple: per token, grouped as "
                        "transformers' pipeline(aggregation_strategy='simple')")
    p.add_argument("--batch-size", type=int, default=64)
    add_checkpoint(p)
    add_device(p)
    p.set_defaults(func=cmd_ner)

    p = sub.add_parser("qa", help="answer questions from a context, with a run fine-tuned by `finetune --task qa`")
    p.add_argument("run", help="fine-tuned run folder (or hf:DIR)")
    p.add_argument("--question", action="append", help="a question (repeatable: each asked of the context)")
    p.add_argument("--context", help="the text holding the answer (@FILE reads it from a file)")
    p.add_argument("--input", help="SQuAD-format .json or .jsonl with question and context")
    p.add_argument("--output", help="write JSON lines (id, question, answer, score, start, end) here")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a listing")
    p.add_argument("--batch-size", type=int, default=64)
    add_checkpoint(p)
    add_device(p)
    p.set_defaults(func=cmd_qa)
