"""`IntegrationKey.find_usable`: the lookup every API request starts with, compiled once
and run on a cursor, must load exactly what the ORM loads, on SQLite and PostgreSQL."""

from datetime import timedelta

import pytest
from django.utils import timezone

from hospital.models import Hospital, IntegrationKey

pytestmark = pytest.mark.django_db


def _field_values(instance) -> dict:
    return {field.attname: getattr(instance, field.attname) for field in type(instance)._meta.concrete_fields}


def test_found_key_and_hospital_equal_what_the_orm_loads(key_a):
    key, raw_key = key_a
    IntegrationKey.objects.filter(pk=key.pk).update(last_used_at=timezone.now() - timedelta(minutes=3))
    Hospital.objects.filter(pk=key.hospital_id).update(shares_reviews_for_training=True)
    expected = IntegrationKey.objects.select_related("hospital").get(pk=key.pk)

    found = IntegrationKey.find_usable(raw_key)

    assert _field_values(found) == _field_values(expected)
    assert _field_values(found.hospital) == _field_values(expected.hospital)
    # Values come back as the fields' Python types, not the database's text (SQLite).
    assert type(found.code) is type(expected.code)
    assert found.last_used_at.tzinfo is not None
    assert found.hospital.shares_reviews_for_training is True
    assert found._state.adding is False and found.hospital._state.adding is False


def test_each_raw_key_finds_its_own_key(key_a, key_b):
    assert IntegrationKey.find_usable(key_a[1]).pk == key_a[0].pk
    assert IntegrationKey.find_usable(key_b[1]).hospital.pk == key_b[0].hospital_id


def test_found_key_saves_as_an_update_not_a_new_row(key_a):
    key, raw_key = key_a
    found = IntegrationKey.find_usable(raw_key)
    found.name = "EMR St Mary's, renamed"
    found.save()

    assert IntegrationKey.objects.filter(hospital=key.hospital).count() == 1
    assert IntegrationKey.objects.get(pk=key.pk).name == "EMR St Mary's, renamed"


def test_unknown_revoked_and_inactive_hospital_keys_are_not_found(key_a, key_b):
    key_a[0].revoke()
    Hospital.objects.filter(pk=key_b[0].hospital_id).update(is_active=False)

    assert IntegrationKey.find_usable(key_a[1]) is None
    assert IntegrationKey.find_usable(key_b[1]) is None
    assert IntegrationKey.find_usable("plr_not-a-key") is None
    assert IntegrationKey.find_usable("key-hash-parameter") is None


def test_lookup_is_one_query(key_a, django_assert_num_queries):
    IntegrationKey.find_usable(key_a[1])  # compiled on first use

    with django_assert_num_queries(1):
        found = IntegrationKey.find_usable(key_a[1])
        assert found.hospital.name == key_a[0].hospital.name
