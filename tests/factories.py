from __future__ import annotations

import factory
from django.contrib.auth.models import Group

from accounts.models import User
from accounts.roles import ensure_role_groups
from diagnostics.models import Case

PASSWORD = "correct-horse-battery-9"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    first_name = factory.Faker("first_name")
    last_name = factory.Faker("last_name")
    password = factory.PostGenerationMethodCall("set_password", PASSWORD)

    @factory.post_generation
    def role(self, create: bool, extracted: str | None, **kwargs: object) -> None:
        if extracted:
            ensure_role_groups()
            self.groups.add(Group.objects.get(name=extracted))
            if extracted == "admin":
                self.is_staff = True
        self.save()


class CaseFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Case

    patient_ref = factory.Sequence(lambda n: f"PSN-{n:05d}")
    body_site = "lymph node"
    note = ""
    created_by = factory.SubFactory(UserFactory, role="clinician")

    @classmethod
    def _create(cls, model_class, *args, **kwargs):  # type: ignore[no-untyped-def]
        """Through the service, so the case gets its unit and object permissions."""
        from diagnostics import services

        return services.case_create(acting_user=kwargs.pop("created_by"), **kwargs)
