"""Real ORM projects (Django, SQLAlchemy with Alembic) on several synced sites (issue 14)."""
