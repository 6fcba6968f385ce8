"""Small SQuAD v1.1-format files for the SQuAD recipe tests (prose written for these tests)."""

from __future__ import annotations

import json
from pathlib import Path

ARTICLES = {
    "Harbour_Bridge": [
        (
            "The Harbour Bridge was opened on 19 March 1932 after eight years of construction. Its steel arch spans "
            "503 metres and carries rail, vehicle, bicycle and pedestrian traffic between the central business district "
            "and the North Shore. The bridge was designed by the engineering firm Dorman Long, whose chief engineer, "
            "Ralph Freeman, prepared the final plans. Some 1,400 workers built it, and sixteen of them died during the "
            "work. The four granite-faced pylons at either end are decorative rather than structural.",
            [
                ("When was the Harbour Bridge opened?", ["19 March 1932", "on 19 March 1932"]),
                ("How long is the steel arch?", ["503 metres"]),
                ("Which firm designed the bridge?", ["Dorman Long", "the engineering firm Dorman Long"]),
                ("Who was the chief engineer of the firm?", ["Ralph Freeman"]),
                ("How many workers died while building the bridge?", ["sixteen"]),
                ("What are the pylons faced with?", ["granite"]),
            ],
        ),
        (
            "Tolls were collected from the opening day to repay the cost of construction, which was finally cleared in "
            "1988. Today the toll is charged only to southbound vehicles. Painting the bridge is a continuous task: a "
            "team of painters applies about 30,000 litres of grey paint to the steelwork in each coat.",
            [
                ("In what year was the construction cost repaid?", ["1988"]),
                ("Which vehicles pay the toll today?", ["southbound vehicles", "southbound"]),
                ("How much paint does one coat need?", ["about 30,000 litres", "30,000 litres"]),
                ("What colour is the paint?", ["grey"]),
            ],
        ),
    ],
    "Glacier_Lake": [
        (
            "Glacier Lake lies at an altitude of 1,850 metres in a valley carved by the retreating Aletsch ice. The lake "
            "is fed by meltwater from three small glaciers and drains through a narrow gorge into the river Rhone. Its "
            "water is a milky turquoise because of the fine rock flour suspended in it. Fishing has been forbidden since "
            "1974, when the valley became a nature reserve. A hut run by the alpine club offers forty beds to walkers "
            "between June and September.",
            [
                ("At what altitude does Glacier Lake lie?", ["1,850 metres"]),
                ("How many glaciers feed the lake?", ["three"]),
                ("Into which river does the lake drain?", ["the river Rhone", "Rhone"]),
                ("Why is the water turquoise?", ["the fine rock flour suspended in it", "fine rock flour"]),
                ("Since when has fishing been forbidden?", ["1974", "since 1974"]),
                ("How many beds does the hut offer?", ["forty"]),
            ],
        ),
    ],
    "Printing_Press": [
        (
            "Johannes Gutenberg began experimenting with movable metal type in Strasbourg around 1440. Back in Mainz he "
            "borrowed money from the merchant Johann Fust to set up a workshop, and by 1455 the workshop had printed "
            "about 180 copies of a Latin Bible. Fust later sued Gutenberg for the repayment of the loan and took over "
            "much of the equipment. Gutenberg's alloy of lead, tin and antimony melted at a low temperature and cast "
            "well, and similar alloys remained in use for five centuries.",
            [
                ("Where did Gutenberg begin experimenting with movable type?", ["Strasbourg", "in Strasbourg"]),
                ("From whom did Gutenberg borrow money?", ["Johann Fust", "the merchant Johann Fust"]),
                ("How many copies of the Bible were printed by 1455?", ["about 180", "180"]),
                ("Which metals made up Gutenberg's alloy?", ["lead, tin and antimony"]),
                ("How long did similar alloys remain in use?", ["five centuries"]),
            ],
        ),
        (
            "Printed books spread quickly: by 1500 presses were working in more than 250 towns across Europe, and "
            "Venice alone had over a hundred print shops. The early printed books of this period are called incunabula, "
            "from the Latin word for cradle.",
            [
                ("How many towns had presses by 1500?", ["more than 250"]),
                ("Which city had over a hundred print shops?", ["Venice"]),
                ("What are early printed books called?", ["incunabula"]),
                ("What does the Latin word incunabula refer to?", ["cradle"]),
            ],
        ),
    ],
}

DEV_ARTICLES = {
    "Lighthouse": [
        (
            "The lighthouse on Skerry Point was first lit in 1858. Its tower is 38 metres tall and built of local "
            "sandstone, and its light can be seen from 22 nautical miles away. Three keepers lived at the station until "
            "1995, when the light was automated. The keepers' cottages now house a small museum about shipwrecks on the "
            "reef.",
            [
                ("When was the lighthouse first lit?", ["1858", "in 1858"]),
                ("How tall is the tower?", ["38 metres"]),
                ("What is the tower built of?", ["local sandstone", "sandstone"]),
                ("From how far can the light be seen?", ["22 nautical miles", "22 nautical miles away"]),
                ("When was the light automated?", ["1995"]),
                ("What do the cottages house now?", ["a small museum about shipwrecks on the reef", "a small museum"]),
            ],
        ),
    ],
    "Salt_Road": [
        (
            "For centuries the Salt Road carried salt from the coastal pans of Lüneburg to Lübeck, a journey of about "
            "eighty kilometres that took carters three days. Salt was so valuable that the towns along the road grew "
            "rich on tolls, and Lübeck used it to preserve the herring it traded across the Baltic Sea.",
            [
                ("Where did the salt come from?", ["the coastal pans of Lüneburg", "Lüneburg"]),
                ("How long was the journey?", ["about eighty kilometres", "eighty kilometres"]),
                ("How many days did the carters need?", ["three days", "three"]),
                ("What did Lübeck preserve with salt?", ["the herring", "herring"]),
                ("Across which sea was the herring traded?", ["the Baltic Sea", "Baltic"]),
            ],
        ),
    ],
}


def squad_json(articles: dict, prefix: str) -> dict:
    """A SQuAD v1.1 document; every answer's ``answer_start`` is the first occurrence in its context."""
    data, number = [], 0
    for title, paragraphs in articles.items():
        entries = []
        for context, questions in paragraphs:
            qas = []
            for question, answers in questions:
                number += 1
                found = []
                for text in answers:
                    start = context.find(text)
                    if start < 0:
                        raise AssertionError(f"{text!r} is not in the context of {title}")
                    found.append({"text": text, "answer_start": start})
                qas.append({"id": f"{prefix}{number:04d}", "question": question, "answers": found})
            entries.append({"context": context, "qas": qas})
        data.append({"title": title, "paragraphs": entries})
    return {"version": "1.1", "data": data}


def write_squad_files(directory: Path) -> tuple[Path, Path]:
    """``train.json`` (25 questions) and ``dev.json`` (11 questions) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    train, dev = directory / "train.json", directory / "dev.json"
    train.write_text(json.dumps(squad_json(ARTICLES, "t")), encoding="utf-8")
    dev.write_text(json.dumps(squad_json(DEV_ARTICLES, "d")), encoding="utf-8")
    return train, dev
