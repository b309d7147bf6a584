"""Every model, imported so that ``Base.metadata`` describes the whole schema (for comparisons)."""

from app.accounts import models as accounts_models
from app.audit import models as audit_models
from app.auth import models as auth_models
from app.db import Base
from catalog import models as catalog_models
from licensing import models as licensing_models

target_metadata = Base.metadata

__all__ = ["accounts_models", "audit_models", "auth_models", "catalog_models", "licensing_models", "target_metadata"]
