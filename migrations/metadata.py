"""Every model, imported so that ``Base.metadata`` describes the whole schema (for comparisons)."""

from app.accounts import models as accounts_models
from app.audit import models as audit_models
from app.auth import models as auth_models
from app.db import Base
from app.notifications import models as notifications_models
from catalog import models as catalog_models
from catalog.inspection import models as inspection_models
from licensing.downloads import models as downloads_models
from licensing.entitlements import models as entitlements_models
from licensing.licences import models as licences_models
from licensing.models import models as model_manifests_models
from licensing.offers import models as offers_models
from licensing.orders import models as orders_models
from licensing.takedowns import models as takedowns_models

target_metadata = Base.metadata


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Schema comparisons leave out the job queue's tables: procrastinate's own SQL defines them (0009)."""
    return not (type_ == "table" and name is not None and name.startswith("procrastinate_"))


__all__ = [
    "accounts_models",
    "audit_models",
    "auth_models",
    "catalog_models",
    "downloads_models",
    "entitlements_models",
    "include_name",
    "inspection_models",
    "licences_models",
    "model_manifests_models",
    "notifications_models",
    "offers_models",
    "orders_models",
    "takedowns_models",
    "target_metadata",
]
