"""Files written by another schema version are refused with the file named and the fix said."""

from __future__ import annotations

import pytest

from nnsam3d.io.schema_version import require_schema_version
from nnsam3d.schemas.plans import Plans


def test_matching_version_is_returned():
    assert require_schema_version({"schema_version": 3}, 3, what="plans", source="p.json", advice="x") == 3


@pytest.mark.parametrize("content", [{}, {"schema_version": 2}, {"schema_version": "two"}, {"schema_version": None}])
def test_other_or_missing_versions_name_the_file_and_the_fix(content):
    with pytest.raises(KeyError, match=r"p\.json: plans schema version -?\d+, this nnsam3d reads version 3\. Rerun it\."):
        require_schema_version(content, 3, what="plans", source="p.json", advice="Rerun it.", error=KeyError)


def test_plans_from_an_older_schema_are_refused():
    with pytest.raises(ValueError, match="old_plans.json: plans schema version 0.*nnsam3d_plan_and_preprocess"):
        Plans.from_json({"schema_version": 0}, source="old_plans.json")
