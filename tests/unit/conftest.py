"""Fixtures shared by the unit tests: the uploader rig (a fake HotTask, a real ledger)."""

from tests.unit.test_uploader import rig as rig
