"""Loading a base: CPU thread count and the kernel-cache caps."""

import pytest


def test_thread_count_follows_the_affinity_mask_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from guardtune.backbone import THREADS_ENV, cpu_threads
    from guardtune.errors import GuardtuneError

    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert cpu_threads() == len(os.sched_getaffinity(0))
    monkeypatch.setenv(THREADS_ENV, "3")
    assert cpu_threads() == 3
    monkeypatch.setenv(THREADS_ENV, "many")
    with pytest.raises(GuardtuneError, match="GUARDTUNE_THREADS='many': expected a positive number"):
        cpu_threads()


def test_loading_a_base_caps_the_kernel_caches_unless_the_user_set_them(
    tiny_base: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from guardtune.backbone import KERNEL_CACHE_ENV, load_backbone

    # Set, then delete: monkeypatch then restores the session's own value (or its absence) after.
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "unset")
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY")
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "7")
    load_backbone(tiny_base)
    assert (
        os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == KERNEL_CACHE_ENV["ONEDNN_PRIMITIVE_CACHE_CAPACITY"]
    )
    assert os.environ["LRU_CACHE_CAPACITY"] == "7"
