"""What the users service publishes, as pydantic models: the contract its subscribers code
against (they never import this module; they read the schemas from the registry or the
committed ``contracts.json``).

``create_app`` declares each one (``bus.declare``); every worker and ``celery eventbus
register`` (run by the web process's deploy) records them in the registry, where a later
schema of the same version must stay BACKWARD compatible: a breaking change is a version 2.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class UserRegistered(BaseModel):
    """user.registered v1: someone signed up."""

    user_id: int = Field(ge=1)
    email: str
    name: str


class UserDeleted(BaseModel):
    """user.deleted v1: a user was removed; only their id is left."""

    user_id: int = Field(ge=1)
