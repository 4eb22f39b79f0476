"""Index, roster and ledger storage: SQLAlchemy 2 models, engine factory, queries, migrations."""
