"""RAG test material: the real default embedder (exported once into the test cache) and small corpora."""

from __future__ import annotations

import functools
from pathlib import Path

from .cache import cache_dir


@functools.cache
def embedder(variant: str = "int8"):
    from edgellm.rag.embed import default_embedder

    return default_embedder(variant, cache=cache_dir())


def embedder_folder(variant: str = "int8") -> Path:
    from edgellm.rag.embed import default_model_folder

    return default_model_folder(variant, cache=cache_dir())


# Topics with distinct vocabulary, so each file's chunks are easy to tell apart.
_TOPICS = [
    ("garden", "Tomatoes need six hours of sun, deep watering twice a week and a stake to climb."),
    ("bikes", "A bicycle chain should be cleaned with degreaser and oiled lightly every few hundred kilometres."),
    ("bread", "Sourdough rises slowly: feed the starter, mix flour and water, fold the dough, bake it hot."),
    ("sky", "Saturn's rings are made of ice and rock; a small telescope shows them on a clear night."),
    ("tax", "Keep receipts for deductible expenses and file the return before the April deadline."),
]


def write_corpus(folder: Path, n_files: int, paragraphs: int = 3) -> list[Path]:
    """n_files Markdown notes, each a title and a few sections built from one topic sentence."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n_files):
        name, sentence = _TOPICS[i % len(_TOPICS)]
        body = [f"# Note {i} about {name}", ""]
        for p in range(paragraphs):
            body += [f"## Part {p} of note {i}", "", f"Note {i}, part {p}: {sentence} " * 3, ""]
        path = folder / f"{name}-{i:03d}.md"
        path.write_text("\n".join(body))
        out.append(path)
    return out


# The fusion fixture: a query naming part QX-4417 and a symptom. target.md holds the answer, diluted among
# other notes; semantic.md paraphrases the fix without any of the query's words; keyword.md repeats the
# part number and several query words about something else; wifi.md and modem.md are related noise.
HYBRID_QUERY = "QX-4417 keeps restarting in a loop after an update, how do I fix it?"
HYBRID_DOCS = {
    "target.md": "# Field notes, spring\n\nWe repainted the storage shelves, moved the spare cables to bin 4, "
                 "counted the printer toner, watered the plants in the lobby and sorted the mail. The QX-4417 at the "
                 "front desk kept restarting; holding its reset button for ten seconds sorted it out. Next week: "
                 "replace the door mat, order coffee and biscuits, book the window cleaner, and archive the old "
                 "invoices.\n",
    "semantic.md": "# Router troubleshooting\n\nDevice reboots continually following a firmware upgrade? Repair it "
                   "by pressing and holding the reset button for ten seconds.\n",
    "keyword.md": "# Parts catalogue\n\nPart QX-4417 (brass hinge). QX-4417 update: the QX-4417 hinge now ships in "
                  "a loop pack of ten. To fix a QX-4417 hinge, use two screws. QX-4417 fits the oak doors.\n",
    "wifi.md": "# Wireless coverage\n\nWhen the wireless signal drops in distant rooms, place the access point "
               "higher and away from metal, or add a mesh satellite.\n",
    "modem.md": "# Modem lights\n\nA blinking amber light on the modem means it has no connection to the provider; "
                "check the cable and call support.\n",
}


def hybrid_fixture(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in HYBRID_DOCS.items():
        (folder / name).write_text(text)
