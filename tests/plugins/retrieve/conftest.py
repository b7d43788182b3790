"""A small corpus with titles that are prefixes of others, KILT-format queries about it, and a built index."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import write_jsonl

DOCS = [
    ("101", "Mercury", "Mercury is a chemical element with symbol Hg, a heavy silvery metal that is liquid at room "
                       "temperature and was used in thermometers."),
    ("102", "Mercury (planet)", "Mercury is the smallest planet of the Solar System and the closest to the Sun; a "
                                "year there lasts 88 Earth days."),
    ("103", "Java", "Java is an island of Indonesia, home to the capital Jakarta and to more than half of the "
                    "country's people."),
    ("104", "Java (programming language)", "Java is a programming language whose compiled bytecode runs on a "
                                           "virtual machine, first released by Sun Microsystems in 1995."),
    ("105", "Violin", "The violin is a bowed string instrument with four strings tuned in fifths, the smallest and "
                      "highest-pitched of its family."),
    ("106", "Cello", "The cello is a large bowed string instrument played seated, held between the knees, tuned an "
                     "octave below the viola."),
    ("107", "Honeybee", "Honeybees live in colonies led by a queen; workers collect nectar and store honey in wax "
                        "combs."),
    ("108", "Volcano", "A volcano is an opening in the crust where molten rock, ash and gases escape; lava flows "
                       "build its cone."),
    ("109", "Glacier", "A glacier is a slowly moving mass of ice formed from compacted snow over many years."),
    ("110", "Telescope", "A telescope gathers light with lenses or mirrors so that distant stars and planets can be "
                         "observed."),
]
QUERIES = [
    ("d1", "which metal is liquid at room temperature", [["101"]]),
    ("d2", "closest planet to the sun", [["102"]]),
    ("d3", "island with the capital jakarta", [["103"]]),
    ("d4", "bytecode virtual machine language", [["104"]]),
    ("d5", "bowed instrument held between the knees", [["106"]]),
    ("d6", "which insects store honey in wax combs", [["107"]]),
    ("d7", "molten rock and ash escaping from the crust", [["108"]]),
    ("d8", "bowed string instruments", [["105"], ["106"]]),
    ("d9", "ice and lava", [["109", "108"]]),
    ("d10", "a question with no provenance", []),
]


def kilt_rows(queries: list[tuple[str, str, list[list[str]]]]) -> list[dict]:
    titles = {i: t for i, t, _ in DOCS}
    rows = []
    for qid, text, sets in queries:
        output = [{"answer": "x", "provenance": [{"wikipedia_id": p, "title": titles[p]} for p in s]} for s in sets]
        rows.append({"id": qid, "input": text, "output": output or [{"answer": "x"}]})
    return rows


@pytest.fixture(scope="session")
def retrieval_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("retrieval")
    corpus = write_jsonl(folder / "corpus.jsonl", [{"id": i, "title": t, "text": x} for i, t, x in DOCS])
    queries = write_jsonl(folder / "dev.jsonl", kilt_rows(QUERIES))
    return {"corpus": corpus, "queries": queries, "folder": folder}


@pytest.fixture(scope="session")
def built_index(retrieval_files: dict[str, Path]) -> Path:
    """bm25, dense and the trie (tiny-llama's tokenizer) built once for the session's tests."""
    from lmlab.plugins.retrieve.command import run_index
    from lmlab.plugins.retrieve.options import IndexOptions

    out = retrieval_files["folder"] / "index"
    run_index(IndexOptions(data=str(retrieval_files["corpus"]), output_dir=out, generator_model="tiny-llama"))
    return out


# A toy vocabulary of titles and a tiny random Llama over it, for the constrained decoding tests.
VOCAB, EOS, PAD = 64, 2, 0
TITLES = [  # prefixes of other titles ("Paris" / "Paris Hilton"), long shared prefixes, single tokens
    [10], [10, 11], [10, 11, 12], [10, 11, 13, 14, 15], [10, 11, 13, 14, 16], [10, 12], [20, 21], [20, 22, 23],
    [30], [31, 32, 33, 34, 35, 36], [31, 32, 33, 34, 35, 37], [31, 32, 33, 34, 35, 37, 38], [40, 10], [41],
    [42, 43], [50, 51, 52],
]
SEQUENCES = [t + [EOS] for t in TITLES]
PROMPTS = [[5, 6], [7, 8, 9, 5, 6, 7, 8, 9, 4], [44, 45, 46], [3], [60, 61, 62, 63, 59], [4, 4, 4, 4, 4, 4, 4]]


@pytest.fixture(scope="module")
def model():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1,
                         eos_token_id=EOS, pad_token_id=PAD)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()
