"""Event handlers that place each event's state into the read store, in any order, after duplicates.

A handler only notes what its event says in `Changes` (plain Python, no database); `Changes.flush`
writes a whole batch set-wise (one statement per table, columns passed as lists and unnested: DuckDB
runs a statement per row about a hundred times slower). Every write keeps the newest state whatever
the order events come in, so applying an event twice changes nothing:
- an activity keeps its highest `revision` (a correction, decision, void or reassignment replaces the
  row, so a figure it contributed to is taken back);
- organisations, projects and volunteers keep the state of their latest event (`event.time`, ties by
  event id); an erasure or a merge is kept whatever came before or after it;
- an assessment is stored once; `replaced_by` is filled from whichever of the pair arrives second.

Then the denormalised columns (store.py): a new activity row takes them from the stored volunteer and
programme as it is inserted; a batch that changed volunteers or programmes rewrites them on the rows
concerned. The live consumer's batch also notes what it changed (`pending_*`, one generation per batch);
the upkeep (`Upkeep`, `catch_up`), in a transaction of its own, recomputes the affected volunteers'
`volunteer_summary` rows and skill pairs and moves the cells by the difference of their activity rows
before and after (the rebuild derives the whole summary, cells and pairs once, at its end: `derive_whole`).
"""
from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime

import duckdb
import orjson

from services.analytics.queries import COUNTED_STATUSES, SKILLS_PERSON_EXPRESSIONS, age_band_sql, age_sql, totals_expressions
from services.analytics.store import (
    CELLS, CHUNK_BITS, ROLLUP_GRAIN, ROLLUP_SUMS, SKILL_LINKS, TOTALS, UPKEEP_NICENESS, AnalyticsStore, Cells, Totals,
    lower_priority,
)
from shared.consumer import unseen
from shared.events import (
    ACTIVITY_CORRECTED, ACTIVITY_REASSIGNED, ACTIVITY_REJECTED, ACTIVITY_SUBMITTED, ACTIVITY_VERIFIED, ACTIVITY_VOIDED,
    ASSESSMENT_RECORDED, ASSESSMENT_REPLACED, ORGANIZATION_CREATED, ORGANIZATION_UPDATED, PROGRAM_CREATED,
    PROJECT_CREATED, PROJECT_UPDATED, VOLUNTEER_ERASED, VOLUNTEER_MERGED, VOLUNTEER_REGISTERED, VOLUNTEER_UPDATED,
    ActivityChanged, AssessmentChanged, CloudEvent, OrganizationChanged, ProgramCreated, ProjectChanged,
    VolunteerChanged, VolunteerErased, VolunteerMerged,
)

# The statuses that count under some `status` of a question: the only ones the rollups hold.
COUNTED = sorted({status for statuses in COUNTED_STATUSES.values() for status in statuses})
ROLLED_UP = ", ".join(f"'{status}'" for status in COUNTED)

# How long the upkeep waits before trying again after a failed `catch_up` (unless a batch wakes it sooner), and
# how long closing waits for the one running.
UPKEEP_RETRY_SECONDS = 1.0
UPKEEP_STOP_SECONDS = 10.0

# Past this many ids, `catch_up` finds rows by a join rather than by the ids written out as constants.
MAX_CONSTANT_IDS = 5000

# Merge chains longer than this (A into B into C ...) are not expected; the bound keeps a cycle,
# which the registry never produces, from looping.
MAX_MERGE_CHAIN = 10


class Changes:
    """One batch's new states, newest per entity, ready to be written set-wise."""

    def __init__(self) -> None:
        self.activities: dict[uuid.UUID, tuple] = {}
        self.volunteers: dict[uuid.UUID, tuple] = {}
        self.organizations: dict[uuid.UUID, tuple] = {}
        self.projects: dict[uuid.UUID, tuple] = {}
        self.programs: dict[uuid.UUID, str] = {}
        self.assessments: dict[uuid.UUID, tuple] = {}
        self.erased: set[uuid.UUID] = set()
        self.merges: dict[uuid.UUID, uuid.UUID] = {}
        self.as_of: datetime | None = None
        self.events = 0

    def __len__(self) -> int:
        return self.events

    def saw(self, event: CloudEvent) -> None:
        self.events += 1
        if self.as_of is None or event.time > self.as_of:
            self.as_of = event.time

    def flush(self, conn: duckdb.DuckDBPyConnection, live: bool = True) -> None:
        """Write everything noted into the store, inside the caller's transaction. `live` (the consumer's
        batches): also note in `pending_*`, as one generation, what the derived tables must take in
        (`catch_up`, in a transaction of its own); otherwise (the rebuild's, whose end derives them whole) not."""
        generation = conn.execute("SELECT nextval('pending_generations')").fetchone()[0] if live else None
        if self.programs:
            _upsert(conn, "program", ["id", "code"], ["UUID", "VARCHAR"],
                    [(k, v) for k, v in self.programs.items()], "code = excluded.code")
        _upsert_latest(conn, "organization", ["id", "parent_id", "kind", "national"], ["UUID", "UUID", "VARCHAR", "BOOLEAN"],
                       self.organizations)
        _upsert_latest(conn, "project", ["id", "program_id", "organization_id"], ["UUID", "UUID", "UUID"], self.projects)
        _upsert_latest(conn, "volunteer", ["id", "organization_id", "sex", "date_of_birth", "residence_province",
                                           "residence_district"],
                       ["UUID", "UUID", "VARCHAR", "DATE", "VARCHAR", "VARCHAR"], self.volunteers)
        if self.erased:
            _upsert(conn, "volunteer", ["id", "erased"], ["UUID", "BOOLEAN"], [(v, True) for v in self.erased],
                    "erased = true")
        if self.merges:
            _upsert(conn, "volunteer", ["id", "merged_into"], ["UUID", "UUID"], list(self.merges.items()),
                    "merged_into = excluded.merged_into")
            _flatten_merge_chains(conn)
        touched = list({*self.volunteers, *self.merges, *self.merges.values()})
        add_stubs(conn, [*touched, *(row[VOLUNTEER] for row in self.activities.values())])
        if self.activities:
            _stage_activities(conn, list(self.activities.values()))
            if generation is None:
                _upsert_staged(conn, None)
            else:
                self._store_staged(conn, generation)
            conn.execute("DROP TABLE staged")
        if touched:
            # Every row naming, or counted for, a volunteer the batch changed: their columns are rewritten.
            _note_before(conn, generation, "(a.volunteer_id IN (SELECT unnest($1::UUID[])) OR "
                                           "a.survivor_id IN (SELECT unnest($1::UUID[])))", [touched])
            redenormalise(conn, touched)
        self._programs_renamed(conn, generation)
        if self.assessments:
            _upsert(conn, "assessment", ASSESSMENT_COLUMNS, ASSESSMENT_TYPES, list(self.assessments.values()), None)
            ids = list(self.assessments)
            conn.execute(
                """UPDATE assessment SET replaced_by = n.id FROM assessment n
                   WHERE n.replaces = assessment.id AND assessment.replaced_by IS NULL
                     AND (n.id IN (SELECT unnest($1::UUID[])) OR assessment.id IN (SELECT unnest($1::UUID[])))""",
                [ids],
            )
        if generation is not None and (self.assessments or self.merges):
            # The pairs of the survivors whose assessments the batch stored or replaced, and of both sides
            # of its merges (a duplicate's pair goes, its survivor's takes its assessments).
            merged = list({*self.merges, *self.merges.values()})
            conn.execute(
                """INSERT INTO pending_survivor SELECT DISTINCT $3, survivor FROM (
                       SELECT coalesce(v.merged_into, s.volunteer_id) AS survivor FROM assessment s
                       LEFT JOIN volunteer v ON v.id = s.volunteer_id
                       WHERE s.id IN (SELECT unnest($1::UUID[])) OR s.replaced_by IN (SELECT unnest($1::UUID[]))
                       UNION SELECT id FROM volunteer WHERE id IN (SELECT unnest($2::UUID[]))
                       UNION SELECT merged_into FROM volunteer WHERE id IN (SELECT unnest($2::UUID[])))
                   WHERE survivor IS NOT NULL""",
                [list(self.assessments), merged, generation])
        if self.as_of is not None:
            conn.execute(
                """INSERT INTO store_state VALUES ('events', $1) ON CONFLICT (name)
                   DO UPDATE SET as_of = greatest(store_state.as_of, excluded.as_of)""",
                [self.as_of],
            )

    def _store_staged(self, conn: duckdb.DuckDBPyConnection, generation: int) -> None:
        """The staged activities stored: a new one inserted, a stored one replaced if of a higher revision,
        each noted in `pending_activity` (a replaced row as it was, before it changes)."""
        ids = list(self.activities)
        # Found in the key's index, then inserted plainly: DuckDB's ON CONFLICT costs ~70 ms at 10 M rows.
        revisions = dict(conn.execute(f"SELECT id, revision FROM activity WHERE {_any_id(ids)}").fetchall())
        stored = list(revisions)
        conn.execute(f"INSERT INTO activity {STAGED} WHERE NOT {_any_id(stored)}")
        new = [i for i in ids if i not in revisions]
        if new:
            conn.execute("INSERT INTO pending_activity (generation, stored, id) SELECT $1, false, unnest($2::UUID[])",
                         [generation, new])
        replaced = [i for i in stored if self.activities[i][1] > revisions[i]]
        if replaced:
            _note_before(conn, generation, _any_id(replaced, "a.id"), [])
            _upsert_staged(conn, replaced)

    def _programs_renamed(self, conn: duckdb.DuckDBPyConnection, generation: int | None) -> None:
        if self.programs:
            renamed = ("a.id IN (SELECT a.id FROM activity a JOIN program p ON p.id = a.program_id "
                       "WHERE p.id IN (SELECT unnest($1::UUID[])) AND a.program IS DISTINCT FROM p.code)")
            _note_before(conn, generation, renamed, [list(self.programs)])
            conn.execute("UPDATE activity SET program = p.code FROM program p WHERE p.id = activity.program_id "
                         "AND p.id IN (SELECT unnest($1::UUID[])) AND activity.program IS DISTINCT FROM p.code",
                         [list(self.programs)])


def _note_before(conn: duckdb.DuckDBPyConnection, generation: int | None, rows: str, params: list) -> None:
    """The activity rows `rows` selects (of alias `a`), before a live batch changes them, as the derived tables
    hold them: noted in `pending_activity` unless this generation noted them already (then the first note
    stands: it was taken before anything in the batch changed them). Nothing outside a live batch."""
    if generation is None:
        return
    conn.execute(f"""INSERT INTO pending_activity SELECT {int(generation)}, true, a.* FROM activity a WHERE {rows}
                     AND a.id NOT IN (SELECT id FROM pending_activity WHERE generation = {int(generation)})""", params)


ACTIVITY_COLUMNS = [
    "id", "revision", "volunteer_id", "project_id", "program_id", "organization_id", "activity_type", "focus_area",
    "date", "hours", "approved_hours", "status", "location_code", "province", "district",
    "ben_female", "ben_male", "ben_other", "ben_children",
]
ACTIVITY_TYPES = [
    "UUID", "INTEGER", "UUID", "UUID", "UUID", "UUID", "VARCHAR", "VARCHAR", "DATE", "DOUBLE", "DOUBLE", "VARCHAR",
    "VARCHAR", "VARCHAR", "VARCHAR", "INTEGER", "INTEGER", "INTEGER", "INTEGER",
]
VOLUNTEER, STATUS = ACTIVITY_COLUMNS.index("volunteer_id"), ACTIVITY_COLUMNS.index("status")
ASSESSMENT_COLUMNS = ["id", "volunteer_id", "instrument", "phase", "taken_on", "scores", "total", "replaces"]
ASSESSMENT_TYPES = ["UUID", "UUID", "VARCHAR", "VARCHAR", "DATE", "JSON", "INTEGER", "UUID"]


def _select_unnested(types: list[str]) -> str:
    return ", ".join(f"unnest(${i + 1}::{t}[])" for i, t in enumerate(types))


def _upsert(conn: duckdb.DuckDBPyConnection, table: str, columns: list[str], types: list[str], rows: list[tuple],
            update: str | None, where: str | None = None) -> None:
    """Insert `rows` (one per key) or, on a key already stored, apply `update` (nothing if None)."""
    on_conflict = f"DO UPDATE SET {update}" + (f" WHERE {where}" if where else "") if update else "DO NOTHING"
    conn.execute(
        f"INSERT INTO {table} ({', '.join(columns)}) SELECT {_select_unnested(types)} ON CONFLICT (id) {on_conflict}",
        [list(column) for column in zip(*rows)],
    )


def _upsert_latest(conn: duckdb.DuckDBPyConnection, table: str, columns: list[str], types: list[str],
                   states: dict[uuid.UUID, tuple]) -> None:
    """Full states of `table`'s entities, each kept only if its event is later than the stored one."""
    if not states:
        return
    _upsert(
        conn, table, [*columns, "event_time", "event_id"], [*types, "TIMESTAMPTZ", "VARCHAR"], list(states.values()),
        ", ".join(f"{c} = excluded.{c}" for c in [*columns[1:], "event_time", "event_id"]),
        where=f"{table}.event_time IS NULL OR excluded.event_time > {table}.event_time"
              f" OR (excluded.event_time = {table}.event_time AND excluded.event_id > {table}.event_id)",
    )


def _flatten_merge_chains(conn: duckdb.DuckDBPyConnection) -> None:
    """A volunteer merged into one that was itself merged points at the last survivor."""
    for _ in range(MAX_MERGE_CHAIN):
        changed = conn.execute(
            """UPDATE volunteer SET merged_into = s.merged_into FROM volunteer s
               WHERE volunteer.merged_into = s.id AND s.merged_into IS NOT NULL AND s.merged_into <> volunteer.id"""
        ).fetchone()[0]
        if not changed:
            return


# The denormalised columns of an activity `a` (a `date`) counted for survivor `s`, of programme `pg`.
DENORMALISED = {
    "survivor_id": "s.id", "volunteer_key": "s.key", "sex": "s.sex", "date_of_birth": "s.date_of_birth",
    "residence_province": "s.residence_province", "residence_district": "s.residence_district", "age_band": age_band_sql(age_sql("a.date", "s.date_of_birth")),
    "program": "pg.code", "month": "CAST(date_trunc('month', a.date) AS DATE)",
}
# Those taken from the survivor (rewritten when a volunteer changes); the others come with the row.
FROM_VOLUNTEER = [c for c in DENORMALISED if c not in ("program", "month")]


def add_stubs(conn: duckdb.DuckDBPyConnection, volunteer_ids: list) -> None:
    """A row (and so an integer key) for each volunteer named that the store has not heard of yet."""
    if volunteer_ids:
        conn.execute("INSERT INTO volunteer (id) SELECT DISTINCT unnest($1::UUID[]) ON CONFLICT DO NOTHING",
                     [volunteer_ids])


def constants(values: list) -> str | None:
    """`values` written out as SQL string constants (None if one cannot be: a NUL character). DuckDB looks
    `column IN (constants)` up in the column's index (a primary key's, or `cell`'s); joined with a list passed
    as a parameter, it scans the table: 2-5 ms against 30-80 ms for 100 ids among 10 M activities or 300 k
    event ids."""
    texts = [str(value) for value in values]
    if any("\x00" in text for text in texts):
        return None
    return ", ".join("'" + text.replace("'", "''") + "'" for text in texts)


def _any_id(ids: list[uuid.UUID], column: str = "id") -> str:
    """`column` is one of `ids` (as constants: `constants`)."""
    return f"{column} IN ({constants([uuid.UUID(str(i)) for i in ids])})" if ids else "false"


def _stage_activities(conn: duckdb.DuckDBPyConnection, rows: list[tuple]) -> None:
    """`staged`: the batch's activity states as rows of `activity`, with the denormalised columns of their
    volunteer as stored now (every volunteer named has a row: `add_stubs`)."""
    unnested = ", ".join(f"unnest(${i + 1}::{t}[]) AS {c}" for i, (c, t) in enumerate(zip(ACTIVITY_COLUMNS, ACTIVITY_TYPES)))
    conn.execute(
        f"""CREATE OR REPLACE TEMP TABLE staged AS
            SELECT a.*, {', '.join(f'{e} AS {c}' for c, e in DENORMALISED.items())} FROM (SELECT {unnested}) a
            JOIN volunteer named ON named.id = a.volunteer_id
            JOIN volunteer s ON s.id = coalesce(named.merged_into, named.id)
            LEFT JOIN program pg ON pg.id = a.program_id""",
        [list(column) for column in zip(*rows)],
    )


STAGED = f"({', '.join([*ACTIVITY_COLUMNS, *DENORMALISED])}) SELECT {', '.join([*ACTIVITY_COLUMNS, *DENORMALISED])} FROM staged"


def _upsert_staged(conn: duckdb.DuckDBPyConnection, ids: list[uuid.UUID] | None) -> None:
    """Each staged activity (those of `ids`, or all) stored, or replacing the stored row of a lower revision."""
    columns = [*ACTIVITY_COLUMNS, *DENORMALISED]
    scope = "" if ids is None else " WHERE id IN (SELECT unnest($1::UUID[]))"
    conn.execute(
        f"""INSERT INTO activity {STAGED}{scope}
            ON CONFLICT (id) DO UPDATE SET {', '.join(f"{c} = excluded.{c}" for c in columns[1:])}
            WHERE excluded.revision > activity.revision""",
        [] if ids is None else [ids],
    )


def redenormalise(conn: duckdb.DuckDBPyConnection, volunteer_ids: list | None) -> None:
    """Rewrite the volunteer columns of the activities naming, or counted for, one of `volunteer_ids`
    (every activity if None) from the stored state of their survivor."""
    volunteer = {c: DENORMALISED[c] for c in FROM_VOLUNTEER}
    scope = "" if volunteer_ids is None else (
        " AND (a.volunteer_id IN (SELECT unnest($1::UUID[])) OR a.survivor_id IN (SELECT unnest($1::UUID[])))")
    conn.execute(
        f"""UPDATE activity a SET {', '.join(f"{c} = {e}" for c, e in volunteer.items())}
            FROM volunteer named, volunteer s
            WHERE named.id = a.volunteer_id AND s.id = coalesce(named.merged_into, named.id){scope}""",
        [] if volunteer_ids is None else [volunteer_ids],
    )


_SUMMARY_KEY = ("volunteer_key", "survivor_id", "program", "project_id", "activity_type", "focus_area", "organization_id")
# The columns of a volunteer's activity rows the cells are computed from, and those the summary needs too.
ROLLUP_COLUMNS = tuple(sorted({*ROLLUP_GRAIN, "hours", "approved_hours", "ben_female", "ben_male", "ben_other",
                               "ben_children"}))
BATCH_COLUMNS = tuple(sorted({*ROLLUP_COLUMNS, *_SUMMARY_KEY}))


def _counted_rows(columns: tuple[str, ...]) -> str:
    """`columns` of the counted activity rows of the volunteers $1."""
    return (f"SELECT {', '.join(columns)} FROM activity WHERE status IN ({ROLLED_UP}) "
            "AND volunteer_key IN (SELECT unnest($1::INTEGER[]))")


def refresh_summary(conn: duckdb.DuckDBPyConnection, keys: list[int] | None, rows: str = "activity") -> None:
    """Recompute the `volunteer_summary` rows of the volunteers `keys` (all of them if None) from their
    activity rows, or from `rows`, a table of just their counted rows."""
    scope, params = ("", []) if keys is None else (" AND volunteer_key IN (SELECT unnest($1::INTEGER[]))", [keys])
    conn.execute(f"DELETE FROM volunteer_summary WHERE true{scope}", params)
    key = ", ".join(_SUMMARY_KEY)
    conn.execute(
        f"""INSERT INTO volunteer_summary SELECT {key}, sum(approved_hours) FROM {rows}
            WHERE status = 'verified'{scope if rows == 'activity' else ''} GROUP BY {key}""",
        params if rows == "activity" else [],
    )


# A survivor's verified hours and the distinct (programme, project, type, focus area) of their verified
# activities, from the summary rows `{scope}` selects; hours summed in exact decimals (the same figure
# whatever order the rows are summed in).
_LINKS_TYPE = "STRUCT(program VARCHAR, project_id UUID, activity_type VARCHAR, focus_area VARCHAR)[]"
_LIST_TYPES = {"programs": "VARCHAR[]", "project_ids": "UUID[]", "activity_types": "VARCHAR[]", "focus_areas": "VARCHAR[]"}
_USAGE = ("SELECT survivor_id, CAST(sum(CAST(hours AS DECIMAL(38, 6))) AS DOUBLE) AS hours, "
          "list_sort(list(DISTINCT {{'program': program, 'project_id': project_id, 'activity_type': activity_type, "
          "'focus_area': focus_area}})) AS links"
          + "".join(f", list_sort(list(DISTINCT {column})) AS {name}" for name, column in SKILL_LINKS.values())
          + " FROM volunteer_summary WHERE {scope} GROUP BY survivor_id")
# The usage columns of a pair, none when the survivor has no verified activity.
_USED_COLUMNS = {"hours": "coalesce(u.hours, 0)", "links": f"coalesce(u.links, CAST([] AS {_LINKS_TYPE}))",
                 **{name: f"coalesce(u.{name}, CAST([] AS {_LIST_TYPES[name]}))" for name, _ in SKILL_LINKS.values()}}
_USED = ", ".join(f"{sql} AS {column}" for column, sql in _USED_COLUMNS.items())
_PAIRS = """
    WITH ranked AS (
        SELECT s.eff_volunteer_id AS vid, s.instrument, s.phase, s.taken_on, s.total, s.scores, row_number() OVER (
            PARTITION BY s.eff_volunteer_id, s.instrument, s.phase
            ORDER BY CASE WHEN s.phase = 'baseline' THEN s.taken_on END, s.taken_on DESC, s.id) AS rank
        FROM assessment_facts s WHERE s.phase IN ('baseline', 'endline'){scope}),
    paired AS (
        SELECT b.vid, b.instrument, b.total AS b_total, e.total AS e_total, e.taken_on AS e_on, b.scores AS bs, e.scores AS es
        FROM ranked b JOIN ranked e ON e.vid = b.vid AND e.instrument = b.instrument AND e.phase = 'endline' AND e.rank = 1
        WHERE b.phase = 'baseline' AND b.rank = 1)
    SELECT p.vid, p.instrument, p.b_total, p.e_total, p.e_on,
           list_sort([{{'item': k, 'b': CAST(p.bs->>k AS DOUBLE), 'e': CAST(p.es->>k AS DOUBLE)}}
                      FOR k IN json_keys(p.es) IF p.bs->>k IS NOT NULL AND p.es->>k IS NOT NULL]),
           {used}
    FROM paired p LEFT JOIN ({usage}) u ON u.survivor_id = p.vid"""


def refresh_skill_pairs(conn: duckdb.DuckDBPyConnection, survivors: list | None) -> None:
    """Recompute the `skill_pair` rows of the merge survivors `survivors` (every one if None) from their
    current assessments (the earliest baseline and the latest endline of each instrument, ties by id, as
    `/analytics/skills` pairs them) and their summary rows, and `skill_totals` with them."""
    if survivors is None:
        # The usage of the survivors with an endline only (those a pair can be of): the usage of every survivor
        # (their summary rows' distinct links) took 5.5 of the 6.7 s at 10 M activities, 60 k of 200 k assessed.
        assessed = "survivor_id IN (SELECT eff_volunteer_id FROM assessment_facts WHERE phase = 'endline')"
        conn.execute("DELETE FROM skill_pair")
        conn.execute("INSERT INTO skill_pair " + _PAIRS.format(scope="", used=_USED, usage=_USAGE.format(scope=assessed)))
        conn.execute("DELETE FROM skill_totals")
        conn.execute(f"INSERT INTO skill_totals {_skill_contributions('true')}")
        return
    chosen = "IN (SELECT unnest($1::UUID[]))"
    with _skill_totals_moved(conn, f"volunteer_id {chosen}", [survivors]):
        conn.execute(f"DELETE FROM skill_pair WHERE volunteer_id {chosen}", [survivors])
        conn.execute("INSERT INTO skill_pair " + _PAIRS.format(
            scope=f" AND s.eff_volunteer_id {chosen}", used=_USED, usage=_USAGE.format(scope=f"survivor_id {chosen}")),
            [survivors])


def refresh_pair_usage(conn: duckdb.DuckDBPyConnection, keys: list[int]) -> None:
    """After the summary rows of the survivors `keys` were recomputed: their pairs' hours and links, and
    `skill_totals` with them."""
    # Most volunteers have no pair (no baseline and endline): then nothing to do (their usage took ~30 ms at 10 M).
    paired = [row[0] for row in conn.execute(
        "SELECT DISTINCT volunteer_id FROM skill_pair WHERE volunteer_id IN "
        "(SELECT id FROM volunteer WHERE key IN (SELECT unnest($1::INTEGER[])))", [keys]).fetchall()]
    if not paired:
        return
    usage = _USAGE.format(scope="survivor_id IN (SELECT unnest($1::UUID[]))")
    with _skill_totals_moved(conn, "volunteer_id IN (SELECT unnest($1::UUID[]))", [paired]):
        conn.execute(f"""UPDATE skill_pair SET {', '.join(f'{c} = n.{c}' for c in _USED_COLUMNS)}
                         FROM (SELECT v.id, {_USED} FROM volunteer v
                               LEFT JOIN ({usage}) u ON u.survivor_id = v.id WHERE v.id IN (SELECT unnest($1::UUID[]))) n
                         WHERE skill_pair.volunteer_id = n.id""", [paired])


_SKILL_TOTALS_KEY = ("instrument", "program", "hours_band", "item")
_SKILL_TOTALS_SUMS = ("volunteers", "baseline", "endline")


def _skill_contributions(scope: str) -> str:
    """What the `skill_pair` rows `scope` selects add to `skill_totals`: per instrument, programme (each of a
    pair's, as the skills answer cuts by programme) and hours band, the pairs and their totals' sums (item
    NULL), and per item scored in both the pairs that have it and the item's sums."""
    band = SKILLS_PERSON_EXPRESSIONS["hours_band"].replace("p.hours", "sp.hours")
    pairs = (f"SELECT sp.instrument, unnest(sp.programs) AS program, {band} AS hours_band, sp.baseline_total, "
             f"sp.endline_total, sp.items FROM skill_pair sp WHERE {scope}")
    return (f"""SELECT instrument, program, hours_band, CAST(NULL AS VARCHAR) AS item, count(*) AS volunteers,
                       CAST(sum(baseline_total) AS DECIMAL(38, 6)) AS baseline,
                       CAST(sum(endline_total) AS DECIMAL(38, 6)) AS endline
                FROM ({pairs}) GROUP BY instrument, program, hours_band
                UNION ALL
                SELECT instrument, program, hours_band, i.item, count(*), sum(CAST(i.b AS DECIMAL(38, 6))),
                       sum(CAST(i.e AS DECIMAL(38, 6)))
                FROM (SELECT instrument, program, hours_band, unnest(items) AS i FROM ({pairs}))
                GROUP BY instrument, program, hours_band, i.item""")


@contextmanager
def _skill_totals_moved(conn: duckdb.DuckDBPyConnection, scope: str, params: list) -> Iterator[None]:
    """Around a change of the `skill_pair` rows `scope` selects (before and after it): `skill_totals` moved by
    what those rows added before and add after (a group left with no pair goes)."""
    conn.execute(f"CREATE OR REPLACE TEMP TABLE skills_before AS {_skill_contributions(scope)}", params)
    yield
    key = ", ".join(_SKILL_TOTALS_KEY)
    moved = ", ".join(f"sum(sign * {c}) AS {c}" for c in _SKILL_TOTALS_SUMS)
    conn.execute(f"""CREATE OR REPLACE TEMP TABLE skills_delta AS
                     SELECT {key}, {moved} FROM (
                         SELECT *, -1 AS sign FROM skills_before
                         UNION ALL SELECT *, 1 AS sign FROM ({_skill_contributions(scope)}))
                     GROUP BY {key} HAVING {' OR '.join(f'sum(sign * {c}) <> 0' for c in _SKILL_TOTALS_SUMS)}""", params)
    conn.execute(f"""MERGE INTO skill_totals AS t USING skills_delta AS d ON {_same('t', 'd', _SKILL_TOTALS_KEY)}
                     WHEN MATCHED AND t.volunteers + d.volunteers = 0 THEN DELETE
                     WHEN MATCHED THEN UPDATE SET {', '.join(f'{c} = t.{c} + d.{c}' for c in _SKILL_TOTALS_SUMS)}
                     WHEN NOT MATCHED THEN INSERT ({', '.join((*_SKILL_TOTALS_KEY, *_SKILL_TOTALS_SUMS))})
                         VALUES ({', '.join(f'd.{c}' for c in (*_SKILL_TOTALS_KEY, *_SKILL_TOTALS_SUMS))})""")
    for temporary in ("skills_before", "skills_delta"):
        conn.execute(f"DROP TABLE {temporary}")


def _at_grain(rows: str) -> str:
    """Activity rows (`rows`: a table or a subquery) grouped at the cells' common grain, with their sums
    (exact decimals: a group that did not change compares equal)."""
    grain = ", ".join(ROLLUP_GRAIN)
    sums = ", ".join(f"{sql} AS {column}" for column, sql in ROLLUP_SUMS.items())
    return f"SELECT {grain}, {sums} FROM {rows} GROUP BY {grain}"


def refresh_rollups(conn: duckdb.DuckDBPyConnection, rows: str | None) -> None:
    """Bring the cells (store.py CELLS) up to the activity rows: with `rows`, a table of the counted rows
    of the volunteers a batch may have changed, and `old_rows`, those rows as the cells hold them (`catch_up`),
    move each cell and chunk by the groups of their rows that changed: whatever the batch changed (a
    correction, decision, void, merge, attribute, in whatever order the events came), a cell is again the
    sums and the bitmaps of its rows. With None, every cell from every row (the rebuild's end, a store
    whose cells were of the first shape)."""
    if rows is not None:
        conn.execute(f"CREATE OR REPLACE TEMP TABLE new_rows AS {_at_grain(rows)}")
        # The groups that changed: taken out of their cells (-1) and put into them (+1).
        conn.execute("""CREATE OR REPLACE TEMP TABLE changed AS
                        SELECT *, -1 AS sign FROM (FROM old_rows EXCEPT FROM new_rows)
                        UNION ALL SELECT *, 1 AS sign FROM (FROM new_rows EXCEPT FROM old_rows)""")
        for name, cells in CELLS.items():
            _update_cells(conn, name, cells)
        for name, totals in TOTALS.items():
            _refresh_totals(conn, name, totals, touched="changed")
        for temporary in ("old_rows", "new_rows", "changed"):
            conn.execute(f"DROP TABLE IF EXISTS {temporary}")
        return
    for name, cells in CELLS.items():
        _recompute_cells(conn, name, cells)
    for name, totals in TOTALS.items():
        _refresh_totals(conn, name, totals, touched=None)


def _refresh_totals(conn: duckdb.DuckDBPyConnection, name: str, totals: Totals, touched: str | None) -> None:
    """Recompute the rows of the table of totals `name` of the groups and chunks that the rows `touched` (a
    table with the cells' columns and `volunteer_key`: the groups a batch changed) fall in, every row if None,
    from its table of cells: per group and chunk the sums and the popcount of the group's bitmaps OR-ed.
    Joined on the chunk too, DuckDB reads only the touched chunks' cells (at 10 M activities, 5 ms for a
    group's cells in one chunk where its every chunk took 32)."""
    expressions = totals_expressions(totals)
    key = (*totals.dimensions, "status", "chunk")
    computed = ", ".join([*(f"{expressions[d]} AS {d}" for d in totals.dimensions), "f.status AS status"])
    per_chunk = (f"SELECT {computed}, f.chunk, {', '.join(f'sum(f.{c}) AS {c}' for c in ROLLUP_SUMS)}, "
                 f"bit_count(bit_or(f.volunteers)) AS volunteers FROM {totals.cells} f")
    if touched is None:
        conn.execute(f"DELETE FROM {name}")
    else:
        conn.execute(f"CREATE OR REPLACE TEMP TABLE touched AS SELECT DISTINCT {computed}, {_chunk('f')} AS chunk FROM {touched} f")
        conn.execute(f"DELETE FROM {name} t USING touched d WHERE {_same('t', 'd', key)}")
        on = " AND ".join([*(f"{expressions[d]} IS NOT DISTINCT FROM d.{d}" for d in totals.dimensions),
                           "f.status = d.status", "f.chunk = d.chunk"])
        per_chunk += f" SEMI JOIN touched d ON {on}"
    conn.execute(f"INSERT INTO {name} ({', '.join(totals.columns)}) {per_chunk} GROUP BY ALL")
    if touched is not None:
        conn.execute("DROP TABLE touched")


def _chunk(alias: str) -> str:
    """The chunk of the volunteer key of row `alias` (store.py CHUNK_BITS)."""
    return f"{alias}.volunteer_key // {CHUNK_BITS}"


def _bits(alias: str) -> str:
    """The bitmap of the volunteer keys of the rows `alias` in one chunk."""
    return f"bitstring_agg({alias}.volunteer_key % {CHUNK_BITS}, 0, {CHUNK_BITS - 1})"


def _recompute_cells(conn: duckdb.DuckDBPyConnection, name: str, cells: Cells) -> None:
    """Every cell and chunk of `name` from the counted activity rows."""
    key = ", ".join(cells.key)
    sums = ", ".join(f"{sql} AS {column}" for column, sql in ROLLUP_SUMS.items())
    conn.execute(f"DELETE FROM {name}")
    conn.execute(f"""INSERT INTO {name} SELECT *, {cells.cell('g')} FROM (
                         SELECT {key}, {_chunk('f')} AS chunk, {sums}, {_bits('f')}
                         FROM activity f WHERE status IN ({ROLLED_UP}) GROUP BY {key}, chunk) g""")


def _same(left: str, right: str, columns: tuple[str, ...]) -> str:
    """Rows `left` and `right` share the values of `columns` (NULL matching NULL: a cell of no district)."""
    return " AND ".join(f"{left}.{column} IS NOT DISTINCT FROM {right}.{column}" for column in columns)


def _update_cells(conn: duckdb.DuckDBPyConnection, name: str, cells: Cells) -> None:
    """Apply the groups that changed (`changed`) to the cells of `name`, without reading the cells' other
    members: in each cell and chunk a changed group is in, the sums move by the groups' difference, and the
    bits of the batch's volunteers are cleared where they had rows (`old_rows`) and set where they have rows
    now (`new_rows`: a volunteer stays a member through a group that did not change, another month's). A
    cell's chunk left with no activity has no member left: it goes. The rows are found in the index on
    `cell` (a join would read every row's bitmap: 40-80 ms a table at 10 M activities) and a bitmap is
    rewritten only where it changes (~0.2 ms a row)."""
    key = ", ".join(cells.key)
    at = (*cells.key, "chunk")
    none = f"bitstring('0', {CHUNK_BITS})"

    def members(rows: str) -> str:  # in the cells' chunks a changed group is in only
        return (f"(SELECT {', '.join('r.' + c for c in cells.key)}, {_chunk('r')} AS chunk, {_bits('r')} AS bits "
                f"FROM {rows} r SEMI JOIN changed d ON {_same('r', 'd', cells.key)} AND {_chunk('r')} = {_chunk('d')} "
                f"GROUP BY ALL)")
    conn.execute(f"""CREATE OR REPLACE TEMP TABLE delta AS
                     SELECT d.*, {cells.cell('d')} AS cell, coalesce(was.bits, {none}) AS cleared,
                            coalesce(now.bits, {none}) AS joined
                     FROM (SELECT {key}, {_chunk('c')} AS chunk,
                                  {', '.join(f'sum(c.sign * c.{column}) AS {column}' for column in ROLLUP_SUMS)}
                           FROM changed c GROUP BY ALL) d
                     LEFT JOIN {members('old_rows')} was ON {_same('was', 'd', at)}
                     LEFT JOIN {members('new_rows')} now ON {_same('now', 'd', at)}""")
    listed = constants([row[0] for row in conn.execute("SELECT cell FROM delta").fetchall()])
    if listed is None:  # a key's value holds a NUL character: joined, reading every row's bitmap
        conn.execute(f"""MERGE INTO {name} AS c USING delta AS d ON c.cell = d.cell
                         WHEN MATCHED AND c.activities + d.activities = 0 THEN DELETE
                         WHEN MATCHED THEN UPDATE SET {', '.join(f'{column} = c.{column} + d.{column}' for column in ROLLUP_SUMS)},
                             volunteers = (c.volunteers & ~d.cleared) | d.joined
                         WHEN NOT MATCHED THEN INSERT ({', '.join(cells.columns)})
                             VALUES ({', '.join(f'd.{c}' for c in (*at, *ROLLUP_SUMS))}, d.joined, d.cell)""")
        conn.execute("DROP TABLE delta")
        return
    found = conn.execute(f"""SELECT c.cell, c.activities + d.activities = 0,
                                    ((c.volunteers & ~d.cleared) | d.joined) <> c.volunteers
                             FROM {name} c JOIN delta d ON c.cell = d.cell WHERE c.cell IN ({listed})""").fetchall()
    emptied = [cell for cell, empty, _ in found if empty]
    kept = [cell for cell, empty, _ in found if not empty]
    moved = [cell for cell, empty, changes in found if changes and not empty]
    if emptied:
        conn.execute(f"DELETE FROM {name} WHERE cell IN ({constants(emptied)})")
    if kept:
        conn.execute(f"""UPDATE {name} AS c SET {', '.join(f'{column} = c.{column} + d.{column}' for column in ROLLUP_SUMS)}
                         FROM delta d WHERE c.cell = d.cell AND c.cell IN ({constants(kept)})""")
    if moved:
        conn.execute(f"""UPDATE {name} AS c SET volunteers = (c.volunteers & ~d.cleared) | d.joined
                         FROM delta d WHERE c.cell = d.cell AND c.cell IN ({constants(moved)})""")
    conn.execute(f"""INSERT INTO {name} ({', '.join(cells.columns)})
                     SELECT {', '.join(at)}, {', '.join(ROLLUP_SUMS)}, joined, cell FROM delta
                     WHERE NOT list_contains($1::VARCHAR[], cell)""", [[cell for cell, _, _ in found]])
    conn.execute("DROP TABLE delta")


def rederive(conn: duckdb.DuckDBPyConnection) -> None:
    """Every derived column and row from the stored entities: stubs, the denormalised columns of every
    activity, the whole summary and rollups (for a store whose tables were written directly, as unit tests do)."""
    conn.execute("INSERT INTO volunteer (id) SELECT DISTINCT volunteer_id FROM activity ON CONFLICT DO NOTHING")
    redenormalise(conn, None)
    conn.execute("UPDATE activity SET program = p.code FROM program p WHERE p.id = activity.program_id")
    conn.execute(f"UPDATE activity AS a SET month = {DENORMALISED['month']}")
    derive_whole(conn)


def derive_whole(conn: duckdb.DuckDBPyConnection) -> None:
    """The derived tables (summary, cells and totals, skill pairs) computed whole from the activity rows and
    assessments, and so caught up: nothing pending."""
    refresh_summary(conn, None)
    refresh_rollups(conn, None)
    refresh_skill_pairs(conn, None)
    conn.execute("DELETE FROM pending_activity")
    conn.execute("DELETE FROM pending_survivor")
    _derived_as_of_events(conn)


def _derived_as_of_events(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute("""INSERT INTO store_state SELECT 'derived', as_of FROM store_state WHERE name = 'events'
                    ON CONFLICT (name) DO UPDATE SET as_of = excluded.as_of
                    WHERE store_state.as_of IS DISTINCT FROM excluded.as_of""")


def _among(ids: list) -> str:
    """`id` is one of `ids`: as constants, looked up in the key's index; past MAX_CONSTANT_IDS (a backlog after a
    restart, a merge of a volunteer with many rows), parsing them costs more than the scan a list parameter makes
    (`_among_params`)."""
    return _any_id(ids) if len(ids) <= MAX_CONSTANT_IDS else "id IN (SELECT unnest($1::UUID[]))"


def _among_params(ids: list) -> list:
    return [] if len(ids) <= MAX_CONSTANT_IDS else [ids]


def catch_up(conn: duckdb.DuckDBPyConnection) -> int:
    """Inside a transaction of its own, beside the consumer's: bring the derived tables up to the activity
    rows and assessments, from what `pending_*` noted; the number of activity rows taken in.

    The generations this transaction sees (`top` and below) are taken in whole, and only they are deleted: a
    consumer's transaction committing meanwhile notes its rows in a later generation, as they were after
    every generation taken in here, so the next call takes them from where this one leaves the derived
    tables. A row's state as the derived tables hold it is its first note in the generations taken in (none
    if it was new); the other rows of its volunteer are as they were. So, as in one transaction: the
    volunteers whose counted rows may have changed (`affected`: a stored row's volunteer before and after, a
    new verified row's) have their rows before (`old_rows`) and now (`batch_rows`) grouped and the cells
    moved by the difference, their summary recomputed; a new counted row of a volunteer otherwise unchanged
    only adds to its cells."""
    top = conn.execute("SELECT max(generation) FROM (SELECT generation FROM pending_activity "
                       "UNION ALL SELECT generation FROM pending_survivor)").fetchone()[0]
    if top is None:
        _derived_as_of_events(conn)  # batches of other events only (registrations, say): nothing else to do
        return 0
    conn.execute(f"""CREATE OR REPLACE TEMP TABLE first_noted AS SELECT * FROM pending_activity WHERE generation <= {top}
                     QUALIFY row_number() OVER (PARTITION BY id ORDER BY generation) = 1""")
    before = {row[0]: (row[1], row[2]) for row in conn.execute(
        "SELECT id, volunteer_key, status FROM first_noted WHERE stored").fetchall()}
    ids = [row[0] for row in conn.execute("SELECT id FROM first_noted").fetchall()]
    now = {row[0]: (row[1], row[2]) for row in conn.execute(
        f"SELECT id, volunteer_key, status FROM activity WHERE {_among(ids)}", _among_params(ids)).fetchall()} if ids else {}
    affected = {key for key, status in before.values() if status in COUNTED}
    affected |= {key for i, (key, status) in now.items() if status in COUNTED and (i in before or status == "verified")}
    affected.discard(None)
    keys = sorted(affected)
    added = [i for i, (key, status) in now.items() if i not in before and status in COUNTED and key not in affected]
    columns = ", ".join(BATCH_COLUMNS)
    if keys:
        conn.execute(f"CREATE OR REPLACE TEMP TABLE kept_rows AS {_counted_rows(('id', *BATCH_COLUMNS))}", [keys])
        rollup_columns = ", ".join(ROLLUP_COLUMNS)
        was = (f"(SELECT {rollup_columns} FROM kept_rows WHERE id NOT IN (SELECT id FROM first_noted) UNION ALL "
               f"SELECT {rollup_columns} FROM first_noted WHERE stored AND status IN ({ROLLED_UP}))")
        conn.execute(f"CREATE OR REPLACE TEMP TABLE old_rows AS {_at_grain(was)}")
        conn.execute(f"CREATE OR REPLACE TEMP TABLE batch_rows AS SELECT {columns} FROM kept_rows")
    else:
        conn.execute(f"CREATE OR REPLACE TEMP TABLE old_rows AS {_at_grain(f'(SELECT {columns} FROM activity LIMIT 0)')}")
        conn.execute(f"CREATE OR REPLACE TEMP TABLE batch_rows AS SELECT {columns} FROM activity LIMIT 0")
    if added:
        conn.execute(f"INSERT INTO batch_rows SELECT {columns} FROM activity WHERE {_among(added)}", _among_params(added))
    if keys:
        refresh_summary(conn, keys, rows="batch_rows")
        refresh_pair_usage(conn, keys)
    if keys or added:
        refresh_rollups(conn, "batch_rows")
    survivors = sorted(row[0] for row in conn.execute(
        f"SELECT DISTINCT volunteer_id FROM pending_survivor WHERE generation <= {top}").fetchall())
    if survivors:
        refresh_skill_pairs(conn, survivors)
    conn.execute(f"DELETE FROM pending_activity WHERE generation <= {top}")
    conn.execute(f"DELETE FROM pending_survivor WHERE generation <= {top}")
    for temporary in ("first_noted", "kept_rows", "old_rows", "batch_rows"):
        conn.execute(f"DROP TABLE IF EXISTS {temporary}")
    _derived_as_of_events(conn)
    return len(ids)


def _later(held: tuple | None, event: CloudEvent) -> bool:
    """Whether `event` is later than the one that produced `held` (its last two fields: time, id)."""
    return held is None or (event.time, event.id) > (held[-2], held[-1])


# ---- handlers: one per event type, each noting its event's state --------------------------------
def organization_changed(changes: Changes, event: CloudEvent, p: OrganizationChanged) -> None:
    if _later(changes.organizations.get(p.id), event):
        changes.organizations[p.id] = (p.id, p.parent_id, p.kind, p.national, event.time, event.id)


def program_created(changes: Changes, event: CloudEvent, p: ProgramCreated) -> None:
    changes.programs[p.id] = p.code


def project_changed(changes: Changes, event: CloudEvent, p: ProjectChanged) -> None:
    if _later(changes.projects.get(p.id), event):
        changes.projects[p.id] = (p.id, p.program_id, p.organization_id, event.time, event.id)


def volunteer_changed(changes: Changes, event: CloudEvent, p: VolunteerChanged) -> None:
    if _later(changes.volunteers.get(p.id), event):
        district = p.residence_commune[:4] if p.residence_commune and len(p.residence_commune) >= 4 else None
        changes.volunteers[p.id] = (p.id, p.organization_id, p.sex, p.date_of_birth, p.residence_province, district,
                                    event.time, event.id)


def volunteer_erased(changes: Changes, event: CloudEvent, p: VolunteerErased) -> None:
    changes.erased.add(p.id)


def volunteer_merged(changes: Changes, event: CloudEvent, p: VolunteerMerged) -> None:
    changes.merges[p.duplicate_id] = p.survivor_id


def activity_changed(changes: Changes, event: CloudEvent, p: ActivityChanged) -> None:
    held = changes.activities.get(p.id)
    if held is not None and held[1] >= p.revision:
        return
    code = p.location_code
    b = p.beneficiaries
    changes.activities[p.id] = (
        p.id, p.revision, p.volunteer_id, p.project_id, p.program_id, p.organization_id, p.activity_type, p.focus_area,
        p.date, p.hours, p.approved_hours, p.status, code, code[:2], code[:4] if len(code) >= 4 else None,
        b.female, b.male, b.other, b.children,
    )


def assessment_changed(changes: Changes, event: CloudEvent, p: AssessmentChanged) -> None:
    changes.assessments[p.id] = (p.id, p.volunteer_id, p.instrument, p.phase, p.taken_on,
                                 orjson.dumps(p.scores).decode(), p.total, p.replaces)


StoreHandler = Callable[[Changes, CloudEvent, object], None]

HANDLERS: dict[str, StoreHandler] = {
    ORGANIZATION_CREATED: organization_changed,
    ORGANIZATION_UPDATED: organization_changed,
    PROGRAM_CREATED: program_created,
    PROJECT_CREATED: project_changed,
    PROJECT_UPDATED: project_changed,
    VOLUNTEER_REGISTERED: volunteer_changed,
    VOLUNTEER_UPDATED: volunteer_changed,
    VOLUNTEER_ERASED: volunteer_erased,
    VOLUNTEER_MERGED: volunteer_merged,
    ACTIVITY_SUBMITTED: activity_changed,
    ACTIVITY_CORRECTED: activity_changed,
    ACTIVITY_VERIFIED: activity_changed,
    ACTIVITY_REJECTED: activity_changed,
    ACTIVITY_VOIDED: activity_changed,
    ACTIVITY_REASSIGNED: activity_changed,
    ASSESSMENT_RECORDED: assessment_changed,
    ASSESSMENT_REPLACED: assessment_changed,
}


def note(changes: Changes, event: CloudEvent, payload: object) -> bool:
    """Note `event` in `changes` if a handler takes its type; whether one did."""
    changes.saw(event)
    handler = HANDLERS.get(event.type)
    if handler is None:
        return False
    handler(changes, event, payload)
    return True


class Upkeep:
    """The derived tables brought up to the activity rows (`catch_up`) in a thread of its own, beside the
    consumer's transactions, whenever a batch has committed (`poke`), until nothing is pending.

    Why apart: a submission is counted (in every answer read from the activity rows) once the consumer's
    transaction commits, and that transaction only stores rows; the summary, cells and totals took four
    fifths of a batch's time at 10 M activities (bench/README.md, "The upkeep apart"), and every submission
    waited for them and for the batch before. Answers read from the derived tables say so in `as_of` (the
    'derived' state); /metrics shows how far behind they are."""

    def __init__(self, store: AnalyticsStore, on_error: Callable[[Exception], None] | None = None):
        self.store = store
        self._on_error = on_error
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="analytics-upkeep", daemon=True)
        self._thread.start()
        self.poke()  # what a previous run left pending

    def poke(self) -> None:
        self._wake.set()

    def close(self, timeout: float = UPKEEP_STOP_SECONDS) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        lower_priority(UPKEEP_NICENESS)
        while True:
            self._wake.wait(timeout=UPKEEP_RETRY_SECONDS)
            self._wake.clear()
            if self._stopping:
                return
            try:
                while self.store.write_aside(catch_up) and not self._stopping:
                    pass
            except Exception as exc:  # noqa: BLE001 - a conflict, say: nothing was taken in (rolled back); reported
                # (logged and counted in /metrics) and tried again at the next wake, at most UPKEEP_RETRY_SECONDS away
                if self._on_error is not None:
                    self._on_error(exc)


class StoreBatches:
    """The consumer runtime's unit (shared/consumer.py `BatchUnits`) for the read store: a batch's
    events noted, written and recorded as processed in one DuckDB transaction, in a worker thread; then
    the derived tables brought up to it, by `upkeep` if given (the service's), otherwise at once, in a
    transaction of its own."""

    def __init__(self, store: AnalyticsStore, upkeep: Upkeep | None = None):
        self.store = store
        self.upkeep = upkeep

    async def apply(self, consumer: str, events: list[tuple[CloudEvent, object]], handlers) -> tuple[int, int]:
        outcome = await self.store.write_soon(lambda conn: _apply_new(conn, consumer, events))
        if self.upkeep is not None:
            self.upkeep.poke()
        else:
            await self.store.write_soon(catch_up)
        return outcome

    async def record_dead_letter(self, consumer: str, event_id: str) -> None:
        await self.store.write_soon(lambda conn: conn.execute(
            "INSERT INTO processed_events (consumer, event_id, outcome) VALUES ($1, $2, 'dead_letter') ON CONFLICT DO NOTHING",
            [consumer, event_id]))

    async def reachable(self) -> bool:
        try:
            await self.store.read("SELECT 1")
            return True
        except duckdb.Error:
            return False


def _apply_new(conn: duckdb.DuckDBPyConnection, consumer: str, events: list[tuple[CloudEvent, object]]) -> tuple[int, int]:
    """Inside the store's transaction: apply the events whose ids are not recorded, and record them."""
    ids = list({event.id for event, _ in events})
    listed = constants(ids)
    seen = {row[0] for row in (
        conn.execute(f"SELECT event_id FROM processed_events WHERE event_id IN ({listed})") if listed is not None else
        conn.execute("SELECT event_id FROM processed_events WHERE event_id IN (SELECT unnest($1::VARCHAR[]))", [ids])
    ).fetchall()} if ids else set()
    fresh, skipped = unseen(events, seen)
    changes = Changes()
    applied = sum(note(changes, event, payload) for event, payload in fresh)
    changes.flush(conn)
    record_processed(conn, consumer, [event.id for event, _ in fresh], unseen=True)
    return applied, skipped


def record_processed(conn: duckdb.DuckDBPyConnection, consumer: str, event_ids: list[str], unseen: bool = False) -> None:
    """Record `event_ids` as applied; `unseen`: none of them is recorded yet (a plain insert, without DuckDB's
    costly conflict check)."""
    if event_ids:
        conn.execute(
            "INSERT INTO processed_events (consumer, event_id) SELECT $1, unnest($2::VARCHAR[])"
            + ("" if unseen else " ON CONFLICT DO NOTHING"),
            [consumer, event_ids],
        )
