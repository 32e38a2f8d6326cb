"""No HTTP views: the stock project serves WebSockets (HTTP answers 404)."""

urlpatterns = []
