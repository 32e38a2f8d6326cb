"""Routes of the web client, mounted at the site root: path("", include("app.web.urls"))."""

from django.urls import path

from . import views

app_name = "web"

urlpatterns = [
    path("", views.rooms, name="rooms"),
    path("login/", views.login, name="login"),
    path("logout/", views.logout, name="logout"),
    path("rooms/<str:name>/", views.room, name="room"),
    path("notifications/", views.notifications, name="notifications"),
]
