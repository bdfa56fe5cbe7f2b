"""The portal database: schema and deterministic rows (over 10,000 in all).

:func:`schema_sql` and :func:`table_rows` describe it; :func:`seed` loads it in one
transaction over an open psycopg connection, so an interrupted seed leaves nothing behind
and the next `lab up` simply seeds again.
"""

from __future__ import annotations

import hashlib
import random
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from .site import CATEGORIES, SENTENCES_EN, SENTENCES_ZH, TOPICS_EN, TOPICS_ZH

COUNTS = {"categories": len(CATEGORIES), "users": 1500, "articles": 3000,
          "attachments": 2500, "comments": 5000}
TABLES = ("categories", "users", "articles", "attachments", "comments")
BASE_TIME = datetime(2023, 1, 1, tzinfo=UTC)

SCHEMA = """
CREATE TABLE categories (
    id          integer PRIMARY KEY,
    slug        text NOT NULL UNIQUE,
    name_zh     text NOT NULL,
    name_en     text NOT NULL
);
CREATE TABLE users (
    id           integer PRIMARY KEY,
    username     text NOT NULL UNIQUE,
    email        text NOT NULL UNIQUE,
    display_name text NOT NULL,
    is_staff     boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL
);
CREATE TABLE articles (
    id           integer PRIMARY KEY,
    category_id  integer NOT NULL REFERENCES categories(id),
    author_id    integer NOT NULL REFERENCES users(id),
    slug         text NOT NULL UNIQUE,
    title        text NOT NULL,
    body         text NOT NULL,
    status       text NOT NULL CHECK (status IN ('draft', 'published', 'archived')),
    published_at timestamptz
);
CREATE INDEX articles_category_idx ON articles (category_id);
CREATE TABLE attachments (
    id           integer PRIMARY KEY,
    article_id   integer NOT NULL REFERENCES articles(id) ON DELETE CASCADE,
    filename     text NOT NULL,
    content_type text NOT NULL,
    size_bytes   integer NOT NULL CHECK (size_bytes >= 0),
    sha256       char(64) NOT NULL
);
CREATE TABLE comments (
    id           integer PRIMARY KEY,
    article_id   integer NOT NULL REFERENCES articles(id) ON DELETE CASCADE,
    user_id      integer NOT NULL REFERENCES users(id),
    body         text NOT NULL,
    created_at   timestamptz NOT NULL
);
CREATE INDEX comments_article_idx ON comments (article_id);
"""


def schema_sql() -> str:
    return SCHEMA


@lru_cache(maxsize=1)
def table_rows() -> dict[str, list[tuple]]:
    """Every row of every table, generated from a fixed seed (identical on every call)."""
    rnd = random.Random(15432)
    rows: dict[str, list[tuple]] = {}
    rows["categories"] = [(i, slug, zh, en) for i, (slug, zh, en) in enumerate(CATEGORIES, 1)]
    surnames = ["wang", "li", "zhang", "liu", "chen", "yang", "zhao", "huang", "zhou", "wu"]
    rows["users"] = [
        (i, f"{surnames[i % 10]}{i:04d}", f"user{i:04d}@lanxi.gov.example",
         f"{surnames[i % 10].title()} {i}", i <= 40,
         BASE_TIME + timedelta(minutes=37 * i))
        for i in range(1, COUNTS["users"] + 1)
    ]
    arts = []
    for i in range(1, COUNTS["articles"] + 1):
        t = rnd.randrange(len(TOPICS_ZH))
        body = "\n\n".join(
            "".join(rnd.choice(SENTENCES_ZH) for _ in range(2)) + " " + rnd.choice(SENTENCES_EN)
            for _ in range(rnd.randrange(2, 5)))
        status = rnd.choices(["published", "draft", "archived"], [85, 5, 10])[0]
        published = BASE_TIME + timedelta(hours=5 * i) if status != "draft" else None
        arts.append((i, 1 + i % len(CATEGORIES), 1 + rnd.randrange(40), f"2023-{i:05d}",
                     f"关于{TOPICS_ZH[t]}的通知 Notice on {TOPICS_EN[t]} #{i}", body, status,
                     published))
    rows["articles"] = arts
    rows["attachments"] = [
        (i, 1 + (i * 7) % COUNTS["articles"], f"attachment-{i:05d}.pdf", "application/pdf",
         2048 + rnd.randrange(500_000), hashlib.sha256(f"attachment-{i}".encode()).hexdigest())
        for i in range(1, COUNTS["attachments"] + 1)
    ]
    rows["comments"] = [
        (i, 1 + rnd.randrange(COUNTS["articles"]), 41 + rnd.randrange(COUNTS["users"] - 40),
         rnd.choice(SENTENCES_ZH) + " " + rnd.choice(SENTENCES_EN),
         BASE_TIME + timedelta(hours=5 * COUNTS["articles"], minutes=3 * i))
        for i in range(1, COUNTS["comments"] + 1)
    ]
    return rows


def total_rows() -> int:
    return sum(COUNTS.values())


def is_seeded(conn) -> bool:
    """True when the portal tables exist and hold the expected number of rows."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('public.comments') IS NOT NULL")
        if not cur.fetchone()[0]:
            return False
        cur.execute("SELECT count(*) FROM comments")
        return cur.fetchone()[0] == COUNTS["comments"]


def seed(conn) -> int:
    """Create the schema and load every row in one transaction; returns the row count.

    ``conn`` is a psycopg connection to the (empty) portal database as its owner.
    """
    rows = table_rows()
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(SCHEMA)
        for table in TABLES:
            with cur.copy(f"COPY {table} FROM STDIN") as copy:
                for row in rows[table]:
                    copy.write_row(row)
        cur.execute("ANALYZE")
    return total_rows()
