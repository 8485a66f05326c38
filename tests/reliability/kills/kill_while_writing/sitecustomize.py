"""Test-only fault injection: a process SIGKILLs itself in the middle of writing a chosen file.

Python imports ``sitecustomize`` at start-up from ``PYTHONPATH``; a test puts this directory there and sets
``LLMFT_KILL_WHILE_WRITING`` to a regular expression. The first write of a file whose path matches then:

- ``torch.save`` (optimizer, scheduler, RNG state) and safetensors' ``save_file`` (weights, as peft and
  transformers write them): writes the first half of the file's real bytes, then SIGKILLs the process, as a
  pod killed mid-save leaves it;
- ``os.replace`` to a matching destination: SIGKILLs the process before the move (files moved before it stay
  where they went).

Without the variable nothing is patched. Nothing here is imported by the code under test.
"""

import io
import os
import re
import signal

_PATTERN = os.environ.get("LLMFT_KILL_WHILE_WRITING", "")


def _die(path: str | None = None, data: bytes = b"") -> None:
    if path is not None:
        with open(path, "wb") as handle:
            handle.write(data[: len(data) // 2])
            handle.flush()
            os.fsync(handle.fileno())
    os.kill(os.getpid(), signal.SIGKILL)


def _install(matches: re.Pattern) -> None:
    import safetensors.torch
    import torch

    torch_save, save_file, replace = torch.save, safetensors.torch.save_file, os.replace

    def killing_torch_save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)) and matches.search(os.fspath(f)):
            buffer = io.BytesIO()
            torch_save(obj, buffer, *args, **kwargs)
            _die(os.fspath(f), buffer.getvalue())
        return torch_save(obj, f, *args, **kwargs)

    def killing_save_file(tensors, filename, metadata=None):
        if matches.search(os.fspath(filename)):
            _die(os.fspath(filename), safetensors.torch.save(tensors, metadata=metadata))
        return save_file(tensors, filename, metadata)

    def killing_replace(src, dst, *args, **kwargs):
        if matches.search(os.fspath(dst)):
            _die()
        return replace(src, dst, *args, **kwargs)

    torch.save, safetensors.torch.save_file, os.replace = killing_torch_save, killing_save_file, killing_replace


if _PATTERN:
    _install(re.compile(_PATTERN))
