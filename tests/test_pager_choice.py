"""Several pagers serve one mount: a directory's user.mofs.pager picks its files' pager."""

from __future__ import annotations

import os
import sqlite3

from conftest import needs_fuse

pytestmark = needs_fuse


def rows(db: str, table: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(f"SELECT object, offset, length(data) FROM {table}").fetchall()


def test_a_tagged_directory_sends_its_new_files_to_its_pager(mount, tmp_path):
    m = mount()
    swap = str(tmp_path / "swap.db")
    tagged = m.path / "tagged"
    tagged.mkdir()
    m.run(["setfattr", "-n", "user.mofs.pager", "-v", f"memory:{swap}", str(tagged)])
    (tagged / "sub").mkdir()  # directories made below inherit the choice
    for path in (tagged / "a", tagged / "sub" / "b", m.path / "plain"):
        path.write_bytes(os.urandom(100000))
    m.run(["sync"])
    m.run(["python3", "-c", "import os,sys\nfor p in sys.argv[1:]:\n"
           "    fd=os.open(p, os.O_RDONLY); os.fsync(fd); os.close(fd)",
           str(tagged / "a"), str(tagged / "sub" / "b"), str(m.path / "plain")])
    shown = m.run(["getfattr", "--only-values", "-n", "user.mofs.pager", str(tagged / "a")])
    assert shown.stdout == f"memory:{swap}"
    shown = m.run(["getfattr", "--only-values", "-n", "user.mofs.pager", str(m.path / "plain")])
    assert shown.stdout == "sqlite:"
    a, b, plain = (os.stat(p).st_ino for p in (tagged / "a", tagged / "sub" / "b",
                                                m.path / "plain"))
    in_swap = {r[0] for r in rows(swap, "pages")}
    in_store = {r[0] for r in rows(str(m.store), "pages")}
    assert {a, b} <= in_swap and plain not in in_swap
    assert plain in in_store and not {a, b} & in_store
    assert sorted(r[1] for r in rows(swap, "pages") if r[0] == a) == [0, 65536]  # two pages
    assert set(m.stat()["pagers"]) == {"sqlite:", f"memory:{swap}"}
    m.umount()
    m.start()
    assert len((tagged / "sub" / "b").read_bytes()) == 100000


def test_only_directories_choose_and_only_pagers_that_open(mount):
    m = mount()
    m.expected_log.append(r"user.mofs.pager on inode")
    (m.path / "d").mkdir()
    (m.path / "f").write_text("x")
    bad = m.run(["setfattr", "-n", "user.mofs.pager", "-v", "nosuch:", str(m.path / "d")],
                check=False)
    assert bad.returncode != 0 and "Invalid argument" in bad.stderr
    on_file = m.run(["setfattr", "-n", "user.mofs.pager", "-v", "memory:", str(m.path / "f")],
                    check=False)
    assert on_file.returncode != 0 and "not permitted" in on_file.stderr
