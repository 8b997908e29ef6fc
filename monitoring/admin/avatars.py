"""Basic admin; the full staff tooling lives in its own issue."""

from django.contrib import admin

from monitoring.models import Avatar, AvatarEvent, Owner


@admin.register(Owner)
class OwnerAdmin(admin.ModelAdmin):
    list_display = ("telegram_id", "username", "display_name", "language", "reachable")
    search_fields = ("telegram_id", "username", "display_name")


@admin.register(Avatar)
class AvatarAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "owner", "training_type", "status", "created_at")
    list_filter = ("status", "training_type")
    search_fields = ("name", "trainings__fal_request_id", "owner__username", "=owner__telegram_id")
    list_select_related = ("owner",)


@admin.register(AvatarEvent)
class AvatarEventAdmin(admin.ModelAdmin):
    list_display = ("created_at", "avatar", "kind", "source", "old_status", "new_status")
    list_filter = ("kind", "source")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
