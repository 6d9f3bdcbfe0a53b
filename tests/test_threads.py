"""Threads (``asvae_kit.threads``): the oversubscription warning and what it advises."""

from __future__ import annotations

import pytest

import asvae_kit
import asvae_kit.threads as threads


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(threads, "_checked", False)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.5, 0.5, 0.5))


def test_two_torch_processes_on_two_cores_get_one_warning(fresh, monkeypatch):
    monkeypatch.setattr(threads, "torch_processes", lambda: 2)
    with pytest.warns(threads.OversubscriptionWarning, match=r"2 torch process\(es\) with 2 thread\(s\) each share 2 core.*--threads 1"):
        threads.warn_if_oversubscribed(2)
    assert threads.warn_if_oversubscribed(2) is None  # once per process


def test_a_busy_machine_is_named_too(fresh, monkeypatch):
    monkeypatch.setattr(threads, "torch_processes", lambda: 1)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (5.0, 5.0, 5.0))
    with pytest.warns(threads.OversubscriptionWarning, match="load average 5.0"):
        threads.warn_if_oversubscribed(1)


def test_one_process_within_its_cores_is_quiet(fresh, monkeypatch):
    monkeypatch.setattr(threads, "torch_processes", lambda: 1)
    assert threads.warn_if_oversubscribed(2) is None


def test_this_process_counts_itself():
    assert threads.torch_processes() >= 1


def test_the_threads_key_sets_torch(monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        asvae_kit.build("mlp-vae", threads=1, device="cpu")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_under_torchrun_the_workers_are_counted(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert threads.torch_processes() == 2
