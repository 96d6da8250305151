"""A normal run says what matters: Ray's per-start token-auth notice is not repeated to the user."""

from __future__ import annotations

import subprocess
import sys

CODE = """
from samsnet_search.search.runner import ray_session
with ray_session(num_cpus=1, quiet=True):
    import ray
    assert ray.is_initialized()
print("started")
"""


def test_local_ray_starts_without_the_token_auth_banner():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0 and "started" in out.stdout, out.stderr[-2000:]
    assert "Token authentication is enabled" not in out.stderr
