"""Which file identities a build receipt may vouch for (lkctl.build.receipt.racy_identity). Pure."""

from __future__ import annotations

import pytest

from lkctl.build.receipt import racy_identity

S = 1_000_000_000  # ns
NOW = 1_764_532_800 * S + 500_000_000


def ident(ctime_ns: int) -> list[object]:
    return ["/p/motd.txt", 0o100644, 64769, 1234, 8, ctime_ns, ctime_ns]


@pytest.mark.parametrize(
    ("ctime", "racy"),
    [
        (NOW - 1 * S - 500_000_000, True),  # whole seconds (ext3, FAT, some network/FUSE file systems), 1.5 s ago:
        (NOW - 500_000_000, True),  # a later edit of the same size may get the very same timestamps
        (NOW - 3 * S - 500_000_000, False),  # two ticks before now: any later edit gets a later ctime
        (NOW - 10_000_000, True),  # 10 ms ticks, 10 ms ago
        (NOW - 10 * S - 123_456_789, False),  # nanoseconds: the kernel's clock tick is far below a build's length
        (NOW - 1_000_017, True),  # nanoseconds, 1 ms ago: still within the coarse clock's tick (up to 10 ms)
        (NOW - 19_999_999, True),
        (NOW - 20_000_017, False),  # two coarse ticks ago
        (NOW + 5 * S + 123_456_789, True),  # in the future (the clock went back): nothing can be said
    ],
)
def test_a_source_whose_timestamps_may_not_show_a_later_edit_is_racy(ctime: int, racy: bool) -> None:
    assert racy_identity(ident(ctime), NOW) is racy


def test_a_missing_source_is_not_racy() -> None:
    assert not racy_identity(["/p/extra.txt", "missing"], NOW)
