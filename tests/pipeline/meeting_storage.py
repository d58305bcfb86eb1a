"""A storage for tests that shows whether files are read and written at once.

In a module of its own: Django imports a storage by its dotted path, and a class defined
in a test module may be imported a second time under that path, as a different class.
"""

from __future__ import annotations

import threading

from django.core.files.storage import FileSystemStorage

DOTTED_PATH = "tests.pipeline.meeting_storage.MeetingStorage"


class MeetingStorage(FileSystemStorage):
    """Local files, except that each read of an original and each write of a heatmap
    waits until `barrier.parties` of them are under way at once. Done one at a time,
    they never meet: the barrier breaks after its timeout and the read or write fails."""

    barrier = threading.Barrier(1)
    failing_heatmap_writes = 0

    def _open(self, name, mode="rb"):
        if "/original" in name:
            self.barrier.wait()
        return super()._open(name, mode)

    def _save(self, name, content):
        if "/heatmap-" in name:
            self.barrier.wait()
            if MeetingStorage.failing_heatmap_writes:
                MeetingStorage.failing_heatmap_writes -= 1
                raise OSError("the object store refused the write")
        return super()._save(name, content)
