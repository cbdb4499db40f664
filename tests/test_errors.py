"""One exception hierarchy, grouped by domain, with MMEngine's built-in classes underneath."""

from __future__ import annotations

import inspect

import pytest

import weightinit as wi
from weightinit import errors

DOMAINS = {
    wi.InitCfgError: ["ConfigStructureError", "ConfigEntryTypeError", "UnknownTypeError", "DistributionError",
                      "OverrideError", "OverrideTargetError", "ShapeError", "InitRecordError",
                      "LSUVError"],
    wi.CheckpointError: ["CheckpointNotFoundError", "CheckpointKeyError",
                         "CheckpointMismatchError", "UnsafeCheckpointError",
                         "CheckpointDownloadError", "CheckpointHashError"],
    wi.MaterializeError: ["UndefinedParameterError"],
    wi.ConfigError: ["ConfigNotFoundError", "ConfigBuildError", "UnknownModelTypeError"],
    wi.HealthCheckError: ["PlotError"],
}


@pytest.mark.parametrize("domain", list(DOMAINS), ids=lambda d: d.__name__)
def test_every_error_belongs_to_its_domain_and_to_init_error(domain):
    for name in DOMAINS[domain]:
        cls = getattr(errors, name)
        assert issubclass(cls, domain) and issubclass(cls, wi.InitError), name


def test_not_found_errors_are_their_domains_and_file_not_found():
    for cls, domain in [(wi.CheckpointNotFoundError, wi.CheckpointError),
                        (wi.ConfigNotFoundError, wi.ConfigError)]:
        err = cls(2, f"x.pth can not be found ({cls.__name__})")
        assert isinstance(err, domain) and isinstance(err, FileNotFoundError)
        assert str(err) == f"x.pth can not be found ({cls.__name__})"  # no "[Errno 2]"


def test_mmengine_builtin_classes_are_kept():
    assert issubclass(wi.UnknownTypeError, KeyError)
    assert issubclass(wi.ConfigStructureError, TypeError)
    assert issubclass(wi.ConfigStructureError, AssertionError)
    assert issubclass(wi.DistributionError, ValueError)
    assert issubclass(wi.OverrideTargetError, RuntimeError)
    assert issubclass(wi.CheckpointKeyError, KeyError)
    assert issubclass(wi.ShardingError, RuntimeError)
    assert str(wi.UnknownTypeError("no 'Foo'")) == "no 'Foo'"  # KeyError would quote it


def test_every_library_error_is_an_init_error():
    outside = {"UsageError", "StopForward", "MetadataError"}  # the CLI's usage error, LSUV's control flow
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass)
               if issubclass(c, BaseException) and c.__module__ == errors.__name__
               and not issubclass(c, Warning)]  # warnings derive from wi.InitWarning
    assert len(classes) > 25
    for cls in classes:
        assert issubclass(cls, wi.InitError) or cls.__name__ in outside, cls.__name__
