from django.urls import path

from . import views

urlpatterns = [
    path("orders/", views.list_orders),
    path("events/", views.events),
    path("health", views.health),
]
