"""Wire messages (pydantic), database tables (SQLModel), the engine and migrations."""
