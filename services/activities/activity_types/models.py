"""Activity types: the table, the public shape, and the seeded taxonomy."""
from __future__ import annotations

from sqlmodel import Field, SQLModel


class ActivityType(SQLModel, table=True):
    __tablename__ = "activity_types"

    code: str = Field(primary_key=True, max_length=60)
    name_en: str = Field(max_length=200)
    name_km: str = Field(max_length=200)
    focus_area: str = Field(max_length=40)


class ActivityTypePublic(SQLModel):
    code: str
    name_en: str
    name_km: str
    focus_area: str


# (code, English, Khmer, focus area). Focus areas are the projects' (§3). Codes are stable: analytics
# group by them and partners map their own lists onto them, so an entry is added, never renamed.
TAXONOMY: tuple[tuple[str, str, str, str], ...] = (
    ("climate_awareness_session", "Climate change awareness session", "វគ្គផ្សព្វផ្សាយការយល់ដឹងអំពីការប្រែប្រួលអាកាសធាតុ", "climate_change"),
    ("climate_adaptation_action", "Climate change adaptation action", "សកម្មភាពបន្សាំនឹងការប្រែប្រួលអាកាសធាតុ", "climate_change"),
    ("tree_planting", "Tree planting", "ការដាំដើមឈើ", "environment"),
    ("clean_up", "Clean-up", "ការសម្អាតបរិស្ថាន", "environment"),
    ("environmental_protection", "Environmental protection", "ការការពារបរិស្ថាន", "environment"),
    ("digital_literacy_training_given", "Digital literacy training given", "ការផ្តល់វគ្គបណ្តុះបណ្តាលអក្ខរកម្មឌីជីថល", "digital_literacy"),
    ("digital_literacy_training_received", "Digital literacy training received", "ការទទួលវគ្គបណ្តុះបណ្តាលអក្ខរកម្មឌីជីថល", "digital_literacy"),
    ("child_rights_awareness", "Child-rights awareness", "ការផ្សព្វផ្សាយអំពីសិទ្ធិកុមារ", "child_protection"),
    ("education_support", "Education support (tutoring, reading clubs)", "ការគាំទ្រការអប់រំ", "education"),
    ("health_promotion", "Health promotion", "ការលើកកម្ពស់សុខភាព", "health"),
    ("community_meeting", "Community meeting", "កិច្ចប្រជុំសហគមន៍", "community_development"),
    ("community_development_work", "Community development work", "ការងារអភិវឌ្ឍសហគមន៍", "community_development"),
    ("other", "Other", "ផ្សេងៗ", "other"),
)
