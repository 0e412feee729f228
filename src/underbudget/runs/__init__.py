"""Run directories (atomic, resumable), checkpoint trees, environment records."""

from .env import environment, git_commit
from .store import Run, runs_root
from .tree import load_tree, save_tree, tree_exists

__all__ = ["Run", "runs_root", "environment", "git_commit", "load_tree", "save_tree", "tree_exists"]
