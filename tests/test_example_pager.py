"""The tutorial's pager, installed from its own package, mounts by its entry-point name."""

from __future__ import annotations

import importlib.metadata
import os

from conftest import needs_fuse

pytestmark = needs_fuse


def test_the_example_package_is_installed_as_a_plugin():
    names = {ep.name for ep in importlib.metadata.entry_points(group="mofs.pagers")}
    assert "example" in names, "install docs/tutorial/mofs-example-pager (make test does)"


def test_cp_cat_fsync_through_the_example_pager(mount, tmp_path):
    pages = tmp_path / "pages.dbm"
    m = mount("--pager", f"example:{pages}")
    src = tmp_path / "src"
    src.write_bytes(os.urandom(300000))
    m.run(["cp", str(src), str(m.path / "f")])
    m.python("import os,sys; fd=os.open(sys.argv[1], os.O_RDWR); os.fsync(fd)",
             str(m.path / "f"))
    m.umount()
    m.start()  # an empty cache: every byte comes back from the dbm file
    m.run(["cmp", str(src), str(m.path / "f")])
    assert any(t["msg"] == "data_supply" for t in m.trace_lines())
    assert m.stat()["pager"] == f"example:{pages}"
