"""`lmlab retrieve questions`: Re3val's question generation, extra `retrieve train --questions` pairs for pages the
training queries never ask about. Rows are appended and fsynced per chunk of documents (an interrupted run loses at
most one chunk); a rerun skips the documents already in the output, after cutting off a line torn by a crash."""

from __future__ import annotations

import json
from typing import Any

from lmlab.core.evaluation.backends import GenerateRequest, load_backend
from lmlab.core.files.atomic import read_complete_lines, sync
from lmlab.core.kernel.console import Progress, log
from lmlab.core.retrieval.retrievers import Document, RetrievalIndex
from lmlab.plugins.retrieve.options import QuestionOptions

PROMPT = ("Write one question that the passage below answers. Ask about a fact in it; do not copy a sentence.\n\n"
          "Title: {title}\nPassage: {text}\nQuestion:")
MAX_PASSAGE_CHARS = 1200
CHUNK = 16  # documents per backend call and per flush


def question_request(doc: Document, opts: QuestionOptions) -> GenerateRequest:
    return GenerateRequest(PROMPT.format(title=doc.title, text=doc.text[:MAX_PASSAGE_CHARS]),
                           max_tokens=opts.max_new_tokens, stop=("\n",), temperature=opts.temperature,
                           top_p=0.95, n=opts.per_document, seed=opts.model.seed)


def parse_question(text: str) -> str | None:
    """The first line, if it reads as a question (three words or more, ending with '?'); else None."""
    line = text.strip().split("\n", 1)[0].strip().strip('"')
    return line if len(line.split()) >= 3 and line.endswith("?") else None


def run_questions(opts: QuestionOptions) -> dict[str, Any]:
    index = RetrievalIndex.load(opts.index)
    documents = index.corpus.documents[:opts.limit]
    done = {str(row.get("wikipedia_id")) for row in read_complete_lines(opts.output)}
    todo = [d for d in documents if d.id not in done]
    written = malformed = 0
    if todo:
        backend = load_backend(opts.backend, opts.model)
        opts.output.parent.mkdir(parents=True, exist_ok=True)
        with opts.output.open("a", encoding="utf-8") as out, \
                Progress("questions", len(todo), line="{label}: {completed}/{total} documents") as progress:
            for start in range(0, len(todo), CHUNK):
                chunk = todo[start:start + CHUNK]
                for doc, texts in zip(chunk, backend.generate([question_request(d, opts) for d in chunk]),
                                      strict=True):
                    parsed = [parse_question(t) for t in texts]
                    malformed += parsed.count(None)
                    for n, question in enumerate(dict.fromkeys(q for q in parsed if q)):
                        row = {"id": f"{doc.id}-q{n}", "input": question, "title": doc.title, "wikipedia_id": doc.id}
                        out.write(json.dumps(row, ensure_ascii=False) + "\n")
                        written += 1
                sync(out)
                progress.advance(len(chunk))
    else:
        log(f"{opts.output}: every document already has questions")
    return {"output": str(opts.output), "documents": len(documents), "already_done": len(documents) - len(todo),
            "written": written, "malformed": malformed}
