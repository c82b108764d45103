"""The seeded assessment instruments: their item codes and the range of each item's score.

Instruments are versioned by code (`soft-skills-v1`) and never change once published, since the
analytics compare scores across years; a new version is a new entry here, shipped with the code that
validates it. That is why they live in code and not in a table a client could edit.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Item:
    code: str
    name_en: str
    name_km: str


@dataclass(frozen=True)
class Instrument:
    code: str
    name_en: str
    name_km: str
    min_score: int
    max_score: int
    items: tuple[Item, ...]

    @property
    def item_codes(self) -> tuple[str, ...]:
        return tuple(item.code for item in self.items)


INSTRUMENTS: dict[str, Instrument] = {
    instrument.code: instrument
    for instrument in (
        Instrument(
            "soft-skills-v1", "Soft skills", "ជំនាញទន់", 1, 5,
            (
                Item("communication", "Communication", "ការប្រាស្រ័យទាក់ទង"),
                Item("teamwork", "Teamwork", "ការងារជាក្រុម"),
                Item("leadership", "Leadership", "ភាពជាអ្នកដឹកនាំ"),
                Item("problem_solving", "Problem solving", "ការដោះស្រាយបញ្ហា"),
                Item("critical_thinking", "Critical thinking", "ការគិតបែបរិះគន់"),
                Item("self_confidence", "Self-confidence", "ទំនុកចិត្តលើខ្លួនឯង"),
            ),
        ),
        Instrument(
            "digital-literacy-v1", "Digital literacy", "អក្ខរកម្មឌីជីថល", 0, 4,
            (
                Item("device_basics", "Device basics", "មូលដ្ឋានគ្រឹះនៃការប្រើប្រាស់ឧបករណ៍"),
                Item("information_search", "Information search", "ការស្វែងរកព័ត៌មាន"),
                Item("online_safety", "Online safety", "សុវត្ថិភាពលើអ៊ីនធឺណិត"),
                Item("digital_communication", "Digital communication", "ការទំនាក់ទំនងឌីជីថល"),
                Item("content_creation", "Content creation", "ការបង្កើតមាតិកា"),
            ),
        ),
    )
}
