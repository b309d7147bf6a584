"""Every HTTP route of licensing, for the application to mount."""

from __future__ import annotations

from litestar.types import ControllerRouterHandler

from licensing.downloads import routes as downloads
from licensing.entitlements import routes as entitlements
from licensing.licences import routes as licences
from licensing.models import routes as models
from licensing.offers import routes as offers
from licensing.orders import routes as orders
from licensing.takedowns import routes as takedowns

route_handlers: list[ControllerRouterHandler] = [
    *licences.route_handlers,
    *offers.route_handlers,
    *orders.route_handlers,
    *entitlements.route_handlers,
    *downloads.route_handlers,
    *models.route_handlers,
    *takedowns.route_handlers,
]
