"""What a record's ``env`` says about the code that ran: commit, dirty, and the files' tree."""

import subprocess

import pytest

from kbench.env import _git_commit


def _git(repo, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / ".gitignore").write_text("results/\n")
    (tmp_path / "kernel.py").write_text("BLOCK = 64\n")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "first")
    return tmp_path


def test_a_clean_checkout_records_its_commit_and_tree(repo):
    assert _git_commit(repo) == (_git(repo, "rev-parse", "HEAD"), False, _git(repo, "rev-parse", "HEAD^{tree}"))


def test_changed_and_new_files_record_the_tree_of_the_commit_that_holds_them(repo):
    # as on the GPU machine: its .git is older than the files sent with the call
    (repo / "kernel.py").write_text("BLOCK = 128\n")
    (repo / "new_kernel.py").write_text("WARPS = 4\n")
    (repo / "results").mkdir()
    (repo / "results" / "run.json").write_text("{}")  # ignored: not part of the code
    objects = sorted(p.name for p in (repo / ".git" / "objects").rglob("*"))
    first = _git(repo, "rev-parse", "HEAD")
    commit, dirty, tree = _git_commit(repo)
    assert (commit, dirty) == (first, True)
    assert tree != _git(repo, "rev-parse", "HEAD^{tree}")
    # the checkout's index and objects are as they were
    assert _git(repo, "diff", "--cached", "--name-only") == ""
    assert sorted(p.name for p in (repo / ".git" / "objects").rglob("*")) == objects
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "second")
    assert _git(repo, "rev-parse", "HEAD^{tree}") == tree


def test_outside_git_every_field_is_none(tmp_path):
    assert _git_commit(tmp_path) == (None, None, None)


def test_records_written_under_results_leave_the_tree_as_it_was(repo):
    (repo / ".gitignore").write_text("results/*\n!results/examples/\n")
    (repo / "results" / "examples").mkdir(parents=True)
    (repo / "results" / "examples" / "kept.json").write_text("{}")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "examples")
    (repo / "kernel.py").write_text("BLOCK = 256\n")
    before = _git_commit(repo)
    (repo / "results" / "examples" / "new-run.json").write_text("{}")  # a suite entry's record
    assert _git_commit(repo) == before and before[1] is True
