"""Use cases tying domain rules, the database and the archive together.

Each public operation opens its own transaction (``with sessions.begin():``); query helpers in
:mod:`router.db.queries` never commit.
"""
