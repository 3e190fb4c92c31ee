"""The backend service of ``changeclip serve``: HTTP job API, job queues, token auth.

Modules: :mod:`.app` (FastAPI factory), :mod:`.jobs` (JobManager), :mod:`.schemas`
(pydantic edge models), :mod:`.preflight` (file checks), :mod:`.auth` and
:mod:`.middleware` (token), :mod:`.process` (binding, handshake, uvicorn),
:mod:`.settings`, :mod:`.system` (devices, model cache).
"""
