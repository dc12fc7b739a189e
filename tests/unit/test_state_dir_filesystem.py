"""The state directory on a network filesystem is refused, naming its type (SQLite's WAL is
unsafe there), unless sync.allow_network_state_dir says otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from hottask_sync.errors import UserError
from hottask_sync.statedir import check_filesystem, filesystem_type

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:40 / /srv/nas rw,relatime shared:9 - nfs4 nas:/export rw,vers=4.2
31 30 0:41 / /srv/nas/local\\040disk rw - xfs /dev/sdb1 rw
32 22 0:42 / /mnt/share rw - cifs //host/share rw
33 22 0:43 / /tmp rw - tmpfs tmpfs rw
"""


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/var/lib/hottask-sync", "ext4"),
        ("/srv/nas/state", "nfs4"),
        ("/srv/nas/local disk/state", "xfs"),  # a local disk mounted below the share
        ("/srv/nasty", "ext4"),  # a prefix of the name is not a parent
        ("/mnt/share/does/not/exist/yet", "cifs"),
        ("/tmp", "tmpfs"),
    ],
)
def test_the_filesystem_of_a_path_is_its_nearest_mount(path: str, kind: str) -> None:
    assert filesystem_type(Path(path), MOUNTINFO) == kind


def test_a_state_dir_on_nfs_is_refused_naming_the_type() -> None:
    with pytest.raises(UserError) as info:
        check_filesystem(Path("/srv/nas/state"), allow_network=False, mountinfo=MOUNTINFO)
    message = str(info.value)
    assert "/srv/nas/state" in message and "nfs4" in message
    assert "sync.allow_network_state_dir" in message
    assert "\n" not in message


def test_a_state_dir_on_a_network_filesystem_may_be_allowed_explicitly() -> None:
    check_filesystem(Path("/srv/nas/state"), allow_network=True, mountinfo=MOUNTINFO)
    check_filesystem(Path("/srv/nas/local disk/x"), allow_network=False, mountinfo=MOUNTINFO)


def test_this_machines_own_mountinfo_is_read(tmp_path: Path) -> None:
    check_filesystem(tmp_path, allow_network=False)  # the test's tmp_path is local
